#!/usr/bin/env bash
# device_targets.sh — issue 14's speed targets from one run, in one call of the
# device machine, on a GPU machine (nothing else on the GPU meanwhile):
#   1. build bench_cuda (make: little to do in a later call of a warm lease)
#   2. bench_cuda step at the 0.6B shape (8 × 1024) and the ~114M shape
#      (bench/configs/qwen3-114m.json, 16 × 1024), every recipe
#   3. the PyTorch peers on the same GPU (bench/torch_gpu_train.py): BF16
#      eager and torch.compile of the whole model, the NVFP4 fake-quant
#      model compiled per layer (fq-compile), at both shapes; each shape
#      under TORCH_TIMEOUT seconds (default 300; the 0.6B torch.compile alone
#      takes minutes of the host's time)
#   4. bench_cuda quant (the quantize kernels against a device copy)
#   5. the 0.6B step's profile, bf16 and averis (AVERIS_CUDA_PROFILE=1)
#   6. bench/targets.py: each target with its value, met or NOT MET
# Expected 6–8 minutes on an H100 or H200. Knobs: TORCH_MODES
# (eager,compile,fq-compile), TORCH_TIMEOUT, STEPS (bench_cuda's timed steps, 5).
# Writes to $OUT (default out/device_targets). Exit status: the number of
# steps that failed to run (a target missed is reported, not a failure).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_targets}
mkdir -p "$OUT"
JOBS=$(nproc 2>/dev/null || echo 4)
TORCH_MODES=${TORCH_MODES:-eager,compile,fq-compile}
TORCH_TIMEOUT=${TORCH_TIMEOUT:-300}
STEPS=${STEPS:-5}
fail=0
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
note_fail() { echo "FAILED: $*"; fail=$((fail + 1)); }

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step "build"
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" CUDA=1 build/bench_cuda >"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi

step "bench_cuda step, Qwen3-0.6B, 8 x 1024"
build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps "$STEPS" 2>&1 | tee "$OUT/bench_step.txt" \
    || note_fail "bench step 0.6B"
step "bench_cuda step, ~114M (bench/configs/qwen3-114m.json), 16 x 1024"
build/bench_cuda step --config bench/configs/qwen3-114m.json --batch 16 --seq 1024 --steps "$STEPS" 2>&1 \
    | tee "$OUT/bench_step_114m.txt" || note_fail "bench step 114M"

step "the PyTorch peers, 0.6B ($TORCH_MODES)"
PYTHONUNBUFFERED=1 timeout "$TORCH_TIMEOUT" python3 bench/torch_gpu_train.py --steps 10 --modes "$TORCH_MODES" 2>&1 \
    | grep -v -i warn | tee "$OUT/bench_torch.txt"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || note_fail "torch peers 0.6B (exit $rc; 124: past $TORCH_TIMEOUT s)"
step "the PyTorch peers, 114M ($TORCH_MODES)"
PYTHONUNBUFFERED=1 timeout "$TORCH_TIMEOUT" python3 bench/torch_gpu_train.py --config qwen3-114m --batch 16 --steps 10 \
    --modes "$TORCH_MODES" 2>&1 | grep -v -i warn | tee "$OUT/bench_torch_114m.txt"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || note_fail "torch peers 114M (exit $rc; 124: past $TORCH_TIMEOUT s)"

step "bench_cuda quant"
build/bench_cuda quant 2>&1 | tee "$OUT/bench_quant.txt" || note_fail "bench quant"

step "profile: where the 0.6B step's device time goes (AVERIS_CUDA_PROFILE=1, bf16 and averis)"
AVERIS_CUDA_PROFILE=1 build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 --recipes bf16,averis \
    >"$OUT/profile_step.txt" 2>&1 || note_fail "profile step"
tail -4 "$OUT/profile_step.txt"

step "issue 14's targets from this run (bench/targets.py)"
python3 bench/targets.py "$OUT" | tee "$OUT/targets.txt"
echo
echo "device_targets: $fail failure(s), $(( $(date +%s) - T0 )) s"
exit $((fail > 0))
