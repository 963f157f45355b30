#!/usr/bin/env bash
# device_python.sh — the Python package on a GPU machine (issue 19): built
# with AVERIS_CUDA=1 (pip, no registry: setuptools and wheel from a carried
# .whl/ made by `pip download setuptools wheel -d .whl`), then the whole
# pytest suite with torch (CPU and CUDA tensors: bit-identical quantization
# to the CLI, the Linear against the C layer, convert + a few training steps
# of a transformers model) and python/bench_linear.py. Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_python}
mkdir -p "$OUT"
fail=0
source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
JOBS=$(nproc 2>/dev/null || echo 4)
# the CLI the tests compare with (CPU build: the package's CUDA build is separate)
make -s -j"$JOBS" BUILD=build-nocuda CUDA=0 build-nocuda/averis >"$OUT/python_build.log" 2>&1 || { tail -20 "$OUT/python_build.log"; exit 1; }
rm -rf build/pysite
if ! AVERIS_CUDA=1 python3 -m pip install -q --no-index --find-links .whl --no-deps --upgrade --target build/pysite . \
    >>"$OUT/python_build.log" 2>&1; then
    tail -30 "$OUT/python_build.log"; echo "pip install failed"; exit 1
fi
PYTHONPATH=build/pysite python3 -c "import averis; assert averis.cuda_compiled(), 'not built with CUDA'; print('averis', averis.__version__ if hasattr(averis, '__version__') else '', 'cuda_compiled', averis.cuda_compiled())" \
    2>&1 | tee -a "$OUT/python_tests.log" || fail=1
AVERIS_BIN=build-nocuda/averis PYTHONPATH=build/pysite python3 -m pytest -q -rs -p no:cacheprovider python/tests 2>&1 \
    | tee -a "$OUT/python_tests.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail=1
PYTHONPATH=build/pysite python3 python/bench_linear.py 2>&1 | tee "$OUT/python_bench_linear.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail=1
echo "device_python: $fail failure(s)"
exit $fail
