#!/usr/bin/env bash
# device_speed.sh [OUT] — the Hopper speed checks of issue 14 (fused
# quantization) and issue 15 (the MoE's grouped experts), alone on the GPU,
# each with its switch off and on in the same run:
#   1. test_cuda fused (the fused paths bit-exact to the separate calls),
#      test_cuda moe (the batched/grouped experts vs the per-expert path, our
#      grouped GEMM vs fp64)
#   2. bench_cuda fused (D to both operands: two calls vs one, vs copy)
#   3. bench_cuda step per recipe, 0.6B (8×1024) and 114M (16×1024),
#      AVERIS_FUSED_QUANT=0 then 1; the profile of averis at 0.6B
#   4. bench_cuda grouped_gemm (the experts' GEMMs: ours vs cuBLASLt per
#      expert); bench_cuda step --moe-modes: moe-small in AVERIS_MOE_GROUPED
#      0, 2, 3, 1 and the paper's 7B-A1.5B (6 layers) in 0, 2, 3, each in one run
# Needs the CUDA build (build/test_cuda, build/bench_cuda). Logs under OUT
# (default out/device_speed); SPEED_DENSE=0 skips 2. and 3., SPEED_7B=0 the
# 7B-A1.5B, SPEED_MODES_TESTS=0 the moe_vs_cpu runs in modes 0, 2 and 3.
# Exit status: failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/device_speed}
mkdir -p "$OUT"
fail=0
note_fail() { echo "FAILED: $*"; fail=$((fail + 1)); }
step() { echo; echo "=== $* ($(date +%T))"; }
step "test_cuda fused, moe_ (the batched experts in the default mode), moe_vs_cpu in modes 0, 2 and 3"
for t in fused moe_; do
    timeout 400 build/test_cuda "$t" >"$OUT/test_cuda_$t.log" 2>&1 || note_fail "test_cuda $t"
    grep -E "FAIL|passed|grouped|fall" "$OUT/test_cuda_$t.log" | tail -12
done
if [[ ${SPEED_MODES_TESTS:-1} == 1 ]] && grep -qs AVERIS_MOE_GROUPED cuda/*.cu; then
    for g in 0 2 3; do
        AVERIS_MOE_GROUPED=$g timeout 300 build/test_cuda moe_vs_cpu >"$OUT/test_cuda_moe_vs_cpu_g$g.log" 2>&1 \
            || note_fail "test_cuda moe_vs_cpu AVERIS_MOE_GROUPED=$g"
        echo "AVERIS_MOE_GROUPED=$g: $(tail -1 "$OUT/test_cuda_moe_vs_cpu_g$g.log")"
    done
fi
if [[ ${SPEED_DENSE:-1} == 1 ]]; then
    step "bench_cuda fused"
    timeout 120 build/bench_cuda fused 2>&1 | tee "$OUT/bench_fused.txt" || note_fail "bench fused"
fi
for shape in $([[ ${SPEED_DENSE:-1} == 1 ]] && echo "qwen3-0.6b:8 bench/configs/qwen3-114m.json:16"); do
    shape=${shape/:/ }
    set -- $shape
    for f in 0 1; do
        step "bench_cuda step $1 AVERIS_FUSED_QUANT=$f"
        AVERIS_FUSED_QUANT=$f timeout 240 build/bench_cuda step --config "$1" --batch "$2" --seq 1024 --steps 5 \
            >"$OUT/step_$(basename "$1" .json)_fused$f.txt" 2>&1 || note_fail "step $1 fused=$f"
        grep -vE "^\s*$" "$OUT/step_$(basename "$1" .json)_fused$f.txt" | tail -12
    done
done
if [[ ${SPEED_DENSE:-1} == 1 ]]; then
    step "profile averis 0.6B"
    AVERIS_CUDA_PROFILE=1 timeout 200 build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 \
        --recipes nvfp4,averis >"$OUT/profile_06b.txt" 2>&1 || note_fail "profile"
fi
if grep -qs AVERIS_MOE_GROUPED cuda/*.cu; then
    if grep -qs grouped_gemm bench/cuda/bench_cuda.cu; then
        step "bench_cuda grouped_gemm: the experts' GEMMs, ours vs cuBLASLt per expert"
        timeout 300 build/bench_cuda grouped_gemm >"$OUT/bench_grouped_gemm.txt" 2>&1 || note_fail "bench grouped_gemm"
        cat "$OUT/bench_grouped_gemm.txt"
    fi
    step "bench_cuda step moe-small, AVERIS_MOE_GROUPED 0, 2, 3 in one run (1 runs as 3: cuBLAS refuses BF16 with an fp32 output)"
    timeout 400 build/bench_cuda step --config moe-small --batch 8 --seq 1024 --steps 5 --moe-modes 0,2,3 \
        >"$OUT/step_moe_small_modes.txt" 2>&1 || note_fail "moe-small modes"
    grep -vE "^\s*$" "$OUT/step_moe_small_modes.txt" | tail -28
    [[ ${SPEED_7B:-1} == 1 ]] && step "bench_cuda step qwen3-moe-7b-a1.5b (6 layers), modes 2, 3" && timeout 500 build/bench_cuda step --config qwen3-moe-7b-a1.5b --layers 6 --batch 4 --seq 1024 --steps 3 \
        --recipes bf16,nvfp4,averis --moe-modes 2,3 >"$OUT/step_moe_7b_modes.txt" 2>&1
    [[ -f $OUT/step_moe_7b_modes.txt ]] && grep -vE "^\s*$" "$OUT/step_moe_7b_modes.txt" | tail -18
else
    echo "(no AVERIS_MOE_GROUPED in this tree: the MoE comparison skipped)"
fi
echo
echo "device_speed: $fail failure(s); logs in $OUT"
exit $((fail > 0))
