#!/usr/bin/env bash
# carry_cudnn_fe.sh — copies the installed cudnn-frontend headers into
# .cudnn_fe/include (git-ignored), for a machine that cannot pip install
# them: carry .cudnn_fe along with the tree and the Makefile finds it there.
# The source: CUDNN_FRONTEND_INCLUDE= if set, else the Python environment's
# nvidia-cudnn-frontend (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${CUDNN_FRONTEND_INCLUDE:-}
if [[ -z "$src" ]]; then
    src=$(python3 -c 'import os, site
for d in site.getsitepackages() + [site.getusersitepackages()]:
    if os.path.exists(os.path.join(d, "include", "cudnn_frontend.h")):
        print(os.path.join(d, "include")); break' 2>/dev/null || true)
fi
if [[ -z "$src" || ! -f "$src/cudnn_frontend.h" ]]; then
    echo "carry_cudnn_fe: no cudnn_frontend.h found (run scripts/setup.sh, or set CUDNN_FRONTEND_INCLUDE=)" >&2
    exit 1
fi
rm -rf .cudnn_fe
mkdir -p .cudnn_fe/include
# the frontend's own files only (site-packages/include may hold other packages' headers)
cp -r "$src"/cudnn_frontend "$src"/cudnn_frontend*.h .cudnn_fe/include/
[[ -f "$src/cudnn_backend_base.h" ]] && cp "$src/cudnn_backend_base.h" .cudnn_fe/include/
ver=$(sed -n 's/^#define CUDNN_FRONTEND_\(MAJOR\|MINOR\|PATCH\)_VERSION *\([0-9]*\).*/\2/p' .cudnn_fe/include/cudnn_frontend_version.h | paste -sd.)
echo "carry_cudnn_fe: frontend $ver from $src -> .cudnn_fe/include ($(du -sh .cudnn_fe | cut -f1))"
