#!/usr/bin/env bash
# compare_baseline.sh BASE_DIR [bench_cuda step args...] — the GPU training
# step of this tree against an earlier tree (e.g. `git archive OLD | tar -x
# -C BASE_DIR`), both built here and timed alternately in one run (A B A B),
# so a refactor can be shown not to slow the step. Needs nvcc and a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/compare_baseline.sh BASE_DIR [bench_cuda step args...]}; shift
args=("$@"); [[ ${#args[@]} -gt 0 ]] || args=(--config qwen3-0.6b --batch 8 --seq 1024 --steps 5)
JOBS=$(nproc 2>/dev/null || echo 4)
for d in . "$base"; do
    log=$(mktemp)
    make -s -C "$d" -j"$JOBS" CUDA=1 ${MAKE_CC:+CC="$MAKE_CC"} cuda-tests >"$log" 2>&1 \
        || { tail -20 "$log"; echo "build failed in $d"; exit 1; }
done
for round in 1 2; do
    for d in . "$base"; do
        echo "--- round $round: $( [[ $d == . ]] && echo this tree || echo "baseline $base")"
        (cd "$d" && build/bench_cuda step "${args[@]}")
    done
done
