#!/usr/bin/env bash
# device_fault.sh — the GPU's fault handling (issue 20), in one call:
#   1. NaN/Inf injection: AVERIS_INJECT_NAN_STEP=3 on `train --device cuda`
#      (and the same run on the CPU): step 3's gradients are NaN on the
#      device; the step must be skipped (reported, counted in log.csv, the
#      weights of checkpoint 3 equal checkpoint 2's bit for bit, step 4
#      updates again) and the run must finish with finite losses.
#   2. An allocation that does not fit: qwen3-0.6b with --batch 128 --seq
#      2048 (activations of hundreds of GiB) must fail with exit status 1 and
#      "cuda: cannot allocate N MiB ... the GPU has N MiB free of N MiB", not
#      crash.
# Needs: nvcc, a GPU, python3 with numpy (the synthetic shards). Writes the
# logs and a summary to $OUT (or out/device_fault). Expected time: the build
# (~3-5 min on 16 cores) + under a minute of runs. Exit status: failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_fault}
RUNS=${RUNS:-/tmp/averis_device_fault}
rm -rf "$RUNS"
mkdir -p "$OUT" "$RUNS"
JOBS=$(nproc 2>/dev/null || echo 4)
fail=0
step() { echo; echo "=== $*"; }
note_fail() { echo "FAILED: $*" | tee -a "$OUT/summary.txt"; fail=$((fail + 1)); }
pass() { echo "ok: $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step "build"
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" CUDA=1 all >"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
grep -E "✓|✗" "$OUT/build.log" | head -8

step "data: synthetic shards (300k train, 20k val tokens, ids < 4096)"
D=$RUNS/data
python3 - "$D" <<'PY' || { echo "cannot write the shards"; exit 1; }
import sys, os, numpy as np
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(1)
def shard(path, n):
    t = np.zeros(n, dtype=np.uint16)
    x = rng.integers(0, 4096, n)
    t[0] = 0
    for i in range(1, n):  # a Markov chain: learnable, so losses move
        t[i] = (t[i - 1] * 5 + 1 + x[i] % 3) % 4096
    h = np.zeros(256, dtype=np.int32); h[0] = 20240520; h[1] = 1; h[2] = n
    with open(path, "wb") as f: f.write(h.tobytes()); f.write(t.tobytes())
shard(f"{d}/f_train_000000.bin", 300000)
shard(f"{d}/f_val_000000.bin", 20000)
PY

step "1. NaN injection at step 3: cuda and cpu"
for dev in cuda cpu; do
    R=$RUNS/nan_$dev
    AVERIS_INJECT_NAN_STEP=3 build/averis train --device $dev --config tiny --recipe averis --data "$D" --batch 4 \
        --seq 64 --steps 6 --ckpt-every 1 --keep 10 --val-every 3 --val-batches 1 --out "$R" \
        >"$OUT/nan_$dev.out" 2>"$OUT/nan_$dev.err"
    rc=$?
    cp "$R/log.csv" "$OUT/nan_$dev.log.csv" 2>/dev/null
    if [[ $rc -ne 0 ]]; then note_fail "nan $dev: exit $rc: $(tail -2 "$OUT/nan_$dev.err")"; continue; fi
    grep -q "step 3: non-finite gradient, update skipped" "$OUT/nan_$dev.err" \
        && pass "nan $dev: step 3 reported as skipped" || note_fail "nan $dev: no skip message"
    grep -q ", 1 skipped" "$OUT/nan_$dev.out" && pass "nan $dev: 1 skipped in the final line" \
        || note_fail "nan $dev: final line: $(cat "$OUT/nan_$dev.out")"
    [[ $(awk -F, '$1==3 {print $8}' "$R/log.csv") == 1 ]] && pass "nan $dev: log.csv step 3 skipped=1" \
        || note_fail "nan $dev: log.csv step 3: $(awk -F, '$1==3' "$R/log.csv")"
    bad=$(awk -F, 'NR>1 && ($4 ~ /nan|inf/ || ($6 != "" && $6 ~ /nan|inf/))' "$R/log.csv" | wc -l)
    [[ $bad -eq 0 ]] && pass "nan $dev: every logged loss finite" || note_fail "nan $dev: $bad non-finite log rows"
    cmp -s "$R/ckpt_00000002/model.safetensors" "$R/ckpt_00000003/model.safetensors" \
        && pass "nan $dev: weights after step 3 = after step 2 (no update)" \
        || note_fail "nan $dev: the skipped step changed the weights"
    cmp -s "$R/ckpt_00000003/model.safetensors" "$R/ckpt_00000004/model.safetensors" \
        && note_fail "nan $dev: step 4 did not update" || pass "nan $dev: step 4 updates again"
done
# the GPU run's checkpoint resumes and evaluates on the CPU: it is finite
build/averis eval "$RUNS/nan_cuda" --data "$D" >"$OUT/nan_cuda_eval.txt" 2>&1 \
    && ! grep -qwE "nan|-?inf" "$OUT/nan_cuda_eval.txt" && pass "nan cuda: its checkpoint evaluates finite on the CPU" \
    || note_fail "nan cuda: eval: $(tail -2 "$OUT/nan_cuda_eval.txt")"

step "2. an allocation that does not fit: qwen3-0.6b, --batch 128 --seq 2048"
build/averis train --device cuda --config qwen3-0.6b --recipe averis --data "$D" --batch 128 --seq 2048 --steps 1 \
    --val-every 0 --out "$RUNS/big" >"$OUT/oversize.out" 2>"$OUT/oversize.err"
rc=$?
cat "$OUT/oversize.err"
if [[ $rc -eq 1 ]] && grep -qE "cuda: cannot allocate [0-9.]+ MiB.*free of [0-9.]+ MiB" "$OUT/oversize.err"; then
    pass "oversize: exit 1, $(grep -oE 'cannot allocate [0-9.]+ MiB' "$OUT/oversize.err" | head -1), free/total named"
else
    note_fail "oversize: exit $rc (want 1 and 'cuda: cannot allocate N MiB ... free of N MiB')"
fi

echo
cat "$OUT/summary.txt"
echo "device_fault: $fail failure(s)"
exit $((fail > 0))
