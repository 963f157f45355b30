# device_env.sh — sourced by the scripts/device_*.sh checks from the repo
# root: OpenBLAS for the CPU reference from the carried .debs/ when the GPU
# machine has none (unpacked once into /tmp/sys; sets LD_LIBRARY_PATH and
# MAKE_CC, the make arguments that find it), and OpenBLAS's core type.
MAKE_CC=()
if [[ -d .debs ]] && ! ldconfig -p | grep -q libopenblas; then
    S=/tmp/sys
    [[ -d $S/usr/lib ]] || for f in .debs/*.deb; do dpkg -x "$f" $S; done
    L=$S/usr/lib/x86_64-linux-gnu
    export LD_LIBRARY_PATH=$L/openblas-pthread:$L${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    MAKE_CC=(CC="cc -I$S/usr/include/x86_64-linux-gnu/openblas-pthread -L$L/openblas-pthread -L$L")
fi
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-COOPERLAKE}
