#!/usr/bin/env bash
# device_analysis.sh — the GPU mean-bias analysis (issue 24) in one call, on a
# GPU machine; expected 3–4 minutes on an H100/H200 (the build ~1.5, memcheck
# ≤ 2.5; DEVICE_ANALYSIS_MEMCHECK=0 skips it):
#   1. build the library, `averis`, test_analysis_gpu and bench_analysis
#   2. test_analysis_gpu: every GPU metric against the CPU analysis on the
#      same tensors (synthetic, the tiny model's taps, the model's rows)
#   3. compute-sanitizer memcheck on its small synthetic cases
#   4. bench_analysis: one analysis step against --analyze-every 250 training
#      steps on the 88M shape (width 768, 12 layers, 12/4 heads, FFN 2048,
#      vocab 16384, 16×1024 tokens), averis and bf16 (goal ≤ 2%); then averis
#      without deferral (AVERIS_ANALYSIS_DEFER=0: each tap's iteration at
#      once, CUDA graphs; also tested in 2.) and on one stream
#      (AVERIS_ANALYSIS_SIDE=0); the panel iteration's pieces at the LM head's
#      shape (bench_analysis --panel-parts: GEMMs, Cholesky-QR's parts)
#   5. end to end: `train --device cuda --analyze-every` on tiny (rows at
#      steps 0, 10, 20, no weights downloaded for them) and
#      `analyze CKPT --device cuda`; moe-tiny's rows include the experts
# Needs nvcc, a GPU; step 5 needs a corpus (DATA, default data/default).
# Knobs: DEVICE_ANALYSIS_MEMCHECK=0, DEVICE_ANALYSIS_E2E=0 (skip 3., 5.),
# DEVICE_ANALYSIS_NCU=1 (ncu's per-kernel times of one bf16 analysis step),
# DEVICE_ANALYSIS_NODEFER_TEST=0 (2. only with deferral),
# ANALYSIS_VARIANTS (the environment settings step 4 times under, for the
# recipes in ANALYSIS_VARIANT_RECIPES, default averis; e.g. bf16,averis;
# a variant of several settings joins them with commas: A=1,B=2),
# ANALYSIS_TEST_VARIANTS (settings test_analysis_gpu runs again under, e.g.
# AVERIS_ANALYSIS_GRAM_SPLIT=16; several settings at once joined by commas).
# Logs and CSVs under $OUT (default out/device_analysis). Exit status: failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_analysis}
DATA=${DATA:-data/default}
RUNS=${RUNS:-/tmp/averis_analysis_runs}
mkdir -p "$OUT" "$RUNS"
JOBS=$(nproc 2>/dev/null || echo 4)
fail=0
step() { echo; echo "=== $* ($(date +%T))"; }
note_fail() { echo "FAILED: $*"; fail=$((fail + 1)); }

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step "build"
TARGETS=(build/test_analysis_gpu build/bench_analysis)
[[ ${DEVICE_ANALYSIS_E2E:-1} == 0 ]] || TARGETS=(all "${TARGETS[@]}") # step 5 runs `averis`
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" CUDA=1 "${TARGETS[@]}" >"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi

step "test_analysis_gpu (GPU metrics vs the CPU analysis)"
timeout 300 build/test_analysis_gpu 2>&1 | tee "$OUT/test_analysis_gpu.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "test_analysis_gpu"

# again under other settings: without deferral (AVERIS_ANALYSIS_DEFER=0: each tensor's
# iteration at once; DEVICE_ANALYSIS_NODEFER_TEST=0 skips it), then ANALYSIS_TEST_VARIANTS
TEST_VARIANTS=(${ANALYSIS_TEST_VARIANTS:-})
[[ ${DEVICE_ANALYSIS_NODEFER_TEST:-1} == 0 ]] || TEST_VARIANTS=(AVERIS_ANALYSIS_DEFER=0 "${TEST_VARIANTS[@]}")
for v in "${TEST_VARIANTS[@]}"; do
    step "test_analysis_gpu under $v"
    log="$OUT/test_analysis_gpu_${v//[^A-Za-z0-9]/_}.log"
    env ${v//,/ } timeout 300 build/test_analysis_gpu >"$log" 2>&1
    rc=$?
    grep -E "largest|graphs|deferred|passed" "$log"
    [[ $rc -eq 0 ]] || note_fail "test_analysis_gpu $v"
done
step "compute-sanitizer memcheck (the small synthetic cases)"
if [[ ${DEVICE_ANALYSIS_MEMCHECK:-1} == 0 ]]; then
    echo "(skipped: DEVICE_ANALYSIS_MEMCHECK=0)"
elif command -v compute-sanitizer >/dev/null; then
    timeout 150 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 build/test_analysis_gpu small \
        >"$OUT/memcheck.log" 2>&1
    rc=$?
    tail -3 "$OUT/memcheck.log"
    [[ $rc -eq 9 || $rc -eq 124 ]] && note_fail "memcheck (exit $rc)"
    grep -q "ERROR SUMMARY: 0 errors" "$OUT/memcheck.log" || note_fail "memcheck reported errors"
else
    echo "(no compute-sanitizer)"
fi

step "bench_analysis: the analysis step vs 250 training steps, 88M shape"
echo "config,recipe,B,T,step_ms,analysis_ms,every,overhead" >"$OUT/bench_analysis.csv"
for r in averis bf16; do
    AVERIS_CUDA_PROFILE=1 timeout 240 build/bench_analysis --recipe "$r" --every 250 --steps 10 --csv "$OUT/bench_analysis.csv" 2>&1 \
        | tee "$OUT/bench_analysis_$r.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "bench_analysis $r"
done

VREC=${ANALYSIS_VARIANT_RECIPES:-averis}
step "bench_analysis, $VREC, variants: ${ANALYSIS_VARIANTS:-AVERIS_ANALYSIS_DEFER=0 AVERIS_ANALYSIS_SIDE=0}"
for v in ${ANALYSIS_VARIANTS:-AVERIS_ANALYSIS_DEFER=0 AVERIS_ANALYSIS_SIDE=0}; do
    for r in ${VREC//,/ }; do
        echo "--- $r, $v"
        env ${v//,/ } timeout 240 build/bench_analysis --recipe "$r" --every 250 --steps 10 \
            --csv "$OUT/bench_analysis_variants.csv" 2>&1 | tee "$OUT/bench_analysis_${r}_${v//[^A-Za-z0-9]/_}.log" | grep -E "overhead|analysis step"
    done
done
step "the panel iteration's pieces (the LM-head gradient's path): 16384 x 16384 and 16384 x 2048, BF16"
for shape in 16384x16384 16384x2048; do
    timeout 120 build/bench_analysis --panel-parts $shape 2>&1 | tee -a "$OUT/panel_parts.txt"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "bench_analysis --panel-parts $shape"
done
step "the analysis step's kernels, bf16 (ncu, DEVICE_ANALYSIS_NCU=1)"
if [[ ${DEVICE_ANALYSIS_NCU:-0} == 0 ]]; then
    echo "(skipped: DEVICE_ANALYSIS_NCU=0)"
elif command -v ncu >/dev/null; then
    # one metric, one pass: no replay; each launch's duration as CSV, summed by kernel name below
    AVERIS_NCU_RANGE=1 timeout 300 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum \
        --csv build/bench_analysis --recipe bf16 --steps 2 >"$OUT/ncu_kernels.txt" 2>&1 \
        || note_fail "ncu over the analysis step"
    python3 scripts/ncu_summary.py "$OUT/ncu_kernels.txt" >"$OUT/ncu_summary.txt" || note_fail "ncu_summary.py"
    head -40 "$OUT/ncu_summary.txt"
else
    echo "(ncu not found)"
fi
step "end to end: train --device cuda --analyze-every, analyze --device cuda"
if [[ ${DEVICE_ANALYSIS_E2E:-1} == 0 ]]; then
    echo "(skipped: DEVICE_ANALYSIS_E2E=0)"
elif ls "$DATA"/train_*.bin >/dev/null 2>&1; then
    rm -rf "$RUNS/tiny"
    if timeout 240 build/averis train --device cuda --config tiny --recipe averis --data "$DATA" --out "$RUNS/tiny" \
        --steps 20 --batch 8 --seq 128 --analyze-every 10 --log-every 10 >"$OUT/train_tiny.log" 2>&1; then
        tail -3 "$OUT/train_tiny.log"
        cp "$RUNS/tiny/analysis.csv" "$OUT/train_tiny_analysis.csv"
        steps=$(tail -n +2 "$RUNS/tiny/analysis.csv" | cut -d, -f1 | sort -un | tr '\n' ' ')
        nrows=$(tail -n +2 "$RUNS/tiny/analysis.csv" | wc -l)
        echo "analysis rows: $nrows at steps $steps"
        [[ $steps == "0 10 20 " ]] || note_fail "analysis steps '$steps', expected 0 10 20"
        timeout 120 build/averis analyze "$RUNS/tiny" --device cuda --data "$DATA" --batch 8 --seq 128 \
            --out "$OUT/analyze_ckpt_cuda.csv" >"$OUT/analyze_ckpt_cuda.log" 2>&1 || note_fail "analyze --device cuda"
        timeout 240 build/averis analyze "$RUNS/tiny" --data "$DATA" --batch 8 --seq 128 \
            --out "$OUT/analyze_ckpt_cpu.csv" >"$OUT/analyze_ckpt_cpu.log" 2>&1 || note_fail "analyze (cpu)"
        tail -2 "$OUT/analyze_ckpt_cuda.log"
    else
        tail -20 "$OUT/train_tiny.log"; note_fail "train --device cuda --analyze-every"
    fi
    # a MoE: the experts' inputs and output gradients are tapped on the GPU too
    rm -rf "$RUNS/moe"
    if timeout 240 build/averis train --device cuda --config moe-tiny --recipe averis --data "$DATA" --out "$RUNS/moe" \
        --steps 10 --batch 4 --seq 128 --analyze-every 10 --log-every 10 >"$OUT/train_moe.log" 2>&1; then
        cp "$RUNS/moe/analysis.csv" "$OUT/train_moe_analysis.csv"
        kinds=$(tail -n +2 "$RUNS/moe/analysis.csv" | cut -d, -f3 | sed 's/[0-9]*//g' | sort -u | tr '\n' ' ')
        echo "MoE analysis kinds: $kinds"
        [[ $kinds == *expert_in* && $kinds == *grad_expert_* ]] || note_fail "MoE analysis rows lack the experts: $kinds"
    else
        tail -20 "$OUT/train_moe.log"; note_fail "train moe-tiny --device cuda --analyze-every"
    fi
else
    echo "(no corpus at $DATA: end-to-end run skipped)"
fi

echo
echo "device_analysis: $fail failure(s); logs in $OUT"
exit $((fail > 0))
