#!/usr/bin/env bash
# setup.sh — installs what the build and tests need, only what is missing
# (idempotent; safe to run on every CI start). Needs root or sudo for apt.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# zlib reads the default corpus (R data files); apt-get download and dpkg-deb fetch it
[[ -e /usr/include/zlib.h ]] || need+=(zlib1g-dev)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
# optional, used when present: OpenBLAS for the fp32 GEMMs
[[ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h || -e /usr/include/openblas/cblas.h ]] \
    || [[ "${AVERIS_NO_BLAS:-0}" == 1 ]] || need+=(libopenblas-dev)
# the Python package's tests (tests/run.sh): venv + pip, Python.h, numpy, pytest
py_ready() {
    python3 - >/dev/null 2>&1 <<'PY'
import ensurepip, os, sysconfig, venv, numpy, pytest
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PY
}
# with the CUDA toolkit: the cudnn-frontend headers for cuDNN attention (the
# Makefile finds them in site-packages/include; cuDNN itself comes with CUDA
# or torch). Header-only, so no dependencies; skipped when already there.
if { command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; } && command -v python3 >/dev/null 2>&1 \
    && [[ "${AVERIS_NO_CUDNN_FE:-0}" != 1 ]]; then
    have_fe=$(python3 -c 'import os, site; print(any(os.path.exists(os.path.join(d, "include", "cudnn_frontend.h")) for d in site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || echo False)
    if [[ "$have_fe" != True ]]; then
        echo "setup: installing the cudnn-frontend headers (pip nvidia-cudnn-frontend)"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-deps \
            "nvidia-cudnn-frontend==${CUDNN_FE_VERSION:-1.32.0}" \
            || echo "setup: pip could not install nvidia-cudnn-frontend; cuDNN attention stays off"
    fi
fi
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
apt_install() {
    echo "setup: installing $*"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
[[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}"
if ! py_ready; then
    # pip where the interpreter allows it (pyenv, venv); Debian's packages where
    # it does not (an externally managed system Python)
    echo "setup: installing numpy and pytest for the Python tests"
    python3 -m pip install -q --disable-pip-version-check numpy pytest >/dev/null 2>&1 || true
    py_ready || apt_install python3-venv python3-pip python3-dev python3-numpy python3-pytest
    py_ready || { echo "setup: the Python test requirements are still missing" >&2; exit 1; }
fi
# the Hugging Face tokenizer test (tests/test_hf_tokenizer.py): the small
# `tokenizers` package (a Rust wheel, no dependencies), with pip like numpy and
# pytest above; where the system Python refuses pip, into build/pyvenv (the
# venv tests/run.sh makes and runs the test with). The test skips, saying so,
# when neither works.
venv="$(cd "$(dirname "$0")/.." && pwd)/build/pyvenv"
if ! python3 -c 'import tokenizers' >/dev/null 2>&1 \
    && ! { [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import tokenizers' >/dev/null 2>&1; }; then
    echo "setup: installing tokenizers for the Hugging Face tokenizer test"
    python3 -m pip install -q --disable-pip-version-check tokenizers >/dev/null 2>&1 \
        || { { [[ -x $venv/bin/python ]] || python3 -m venv --system-site-packages "$venv"; } \
             && "$venv/bin/python" -m pip install -q --disable-pip-version-check tokenizers >/dev/null 2>&1; } \
        || echo "setup: pip could not install tokenizers; tests/test_hf_tokenizer.py will be skipped"
fi
echo "setup: ready"
