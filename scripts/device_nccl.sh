#!/usr/bin/env bash
# device_nccl.sh — the data-parallel (NCCL, ZeRO-1) path on a GPU machine
# (issue 16), in one call; about 3-4 minutes on one H100/H200 (half of it the
# build):
#   1. build with NCCL (CUDNN=0 to save time; the features line must say ✓ NCCL)
#   2. tiny, 30 steps: `--device cuda --gpus 1` vs the plain `--device cuda`
#      (bf16 and averis recipes): losses compared (expected bit-identical at
#      N = 1; the bound is 1e-6 relative), and --grad-dtype bf16 (bound 2e-2)
#   3. the 1-GPU data-parallel checkpoint resumed on the CPU, and on the GPU
#      without data parallel
#   4. failure handling: one rank of a 2-rank world alone (a dead peer on one
#      GPU) must exit with a clear error within the timeout, not hang; with 2+
#      GPUs also a --gpus 2 run whose rank 1 is SIGKILLed mid-run, and
#      --gpus 2 × batch 4 vs --gpus 1 × batch 8
#   5. bench: tokens/s through the data-parallel path vs the plain path on
#      one GPU (the overhead at N = 1), small (~27M) and an ~86M config
# Usage: OUT=dir bash scripts/device_nccl.sh [quick|bench]   (quick: steps 2-4
# only, reusing BUILD's binaries; scripts/device_check.sh calls it so; bench:
# step 5 only, reusing BUILD's binaries)
# Needs: nvcc + NCCL (with the CUDA toolkit), a GPU, data/default (or DATA=).
# Writes logs and nccl_summary.txt / bench_nccl.csv to $OUT. Exit status: failures.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
OUT=${OUT:-out/device_nccl}
RUNS=${RUNS:-/tmp/averis_nccl_runs}
DATA=${DATA:-data/default}
BUILD=${BUILD:-build-nccl}
mkdir -p "$OUT" "$RUNS"
OUT=$(cd "$OUT" && pwd)
JOBS=$(nproc 2>/dev/null || echo 4)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-COOPERLAKE}
SUM="$OUT/nccl_summary.txt"
: >"$SUM"
fail=0
step() { echo; echo "=== $*"; }
say() { echo "$*" | tee -a "$SUM"; }
note_fail() { say "FAILED: $*"; fail=$((fail + 1)); }
T0=$(date +%s)

[[ -d $DATA ]] || { echo "no $DATA (scripts/get_data.sh, or DATA=)"; exit 1; }
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$SUM"

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)

[[ $MODE == full || $MODE == quick || $MODE == bench ]] || { echo "device_nccl.sh: mode full, quick or bench, not '$MODE'"; exit 2; }
if [[ $MODE == full ]]; then
    step "build (BUILD=$BUILD, CUDA=1, CUDNN=0)"
    if ! make -s -j"$JOBS" "${MAKE_CC[@]}" BUILD="$BUILD" CUDA=1 CUDNN=0 all >"$RUNS/build.log" 2>&1; then
        tail -30 "$RUNS/build.log"; echo "BUILD FAILED"; exit 1
    fi
    grep -E "✓|✗" "$RUNS/build.log" | tee -a "$SUM"
    grep -q "✓ NCCL" "$RUNS/build.log" || { note_fail "NCCL not detected"; exit 1; }
    echo "build: $(( $(date +%s) - T0 )) s"
fi
AV=$BUILD/averis
[[ -x $AV ]] || { echo "no $AV (build first, or BUILD=)"; exit 1; }

# compare.py A/log.csv B/log.csv TAG BOUND: max |Δloss|/loss over the steps and the val losses
compare() {
    python3 - "$@" <<'EOF'
import csv, sys
a = list(csv.DictReader(open(sys.argv[1]))); b = list(csv.DictReader(open(sys.argv[2])))
tag, bound = sys.argv[3], float(sys.argv[4])
ok = len(a) == len(b) and len(a) > 0
d = [abs(float(x['loss']) - float(y['loss'])) / float(x['loss']) for x, y in zip(a, b)]
n = [abs(float(x['grad_norm']) - float(y['grad_norm'])) / max(float(x['grad_norm']), 1e-30) for x, y in zip(a, b)]
va = [float(x['val_loss']) for x in a if x['val_loss']]; vb = [float(y['val_loss']) for y in b if y['val_loss']]
same = all(x['loss'] == y['loss'] and x['grad_norm'] == y['grad_norm'] for x, y in zip(a, b))
dv = max([abs(x - y) / x for x, y in zip(va, vb)] or [0])
ok = ok and max(d) <= bound and max(n) <= max(bound, 1e-6) * 10 and dv <= bound
print(f"{tag}: {len(a)} steps, max rel loss diff {max(d):.2e}, grad norm {max(n):.2e}, val {dv:.2e}"
      f" ({'identical logs' if same else 'not identical'}); bound {bound:g}: {'ok' if ok else 'OUT OF BOUNDS'}")
sys.exit(0 if ok else 1)
EOF
}

TRAIN=(--config tiny --data "$DATA" --steps 30 --batch 8 --seq 128 --lr 1e-3 --seed 1 --val-every 15 --val-batches 4 --log-every 15)
if [[ $MODE != bench ]]; then
step "tiny, 30 steps: --gpus 1 (data-parallel path) vs plain"
for r in bf16 averis; do
    rm -rf "$RUNS/plain_$r" "$RUNS/dp1_$r"
    $AV train "${TRAIN[@]}" --recipe $r --device cuda --out "$RUNS/plain_$r" >"$RUNS/plain_$r.out" 2>&1 || note_fail "plain $r: $(tail -1 "$RUNS/plain_$r.out")"
    $AV train "${TRAIN[@]}" --recipe $r --device cuda --gpus 1 --out "$RUNS/dp1_$r" >"$RUNS/dp1_$r.out" 2>&1 || note_fail "--gpus 1 $r: $(tail -1 "$RUNS/dp1_$r.out")"
    grep -m1 "data parallel" "$RUNS/dp1_$r.out" | sed 's/^train: //' | cut -c1-220
    compare "$RUNS/plain_$r/log.csv" "$RUNS/dp1_$r/log.csv" "$r: --gpus 1 vs plain" 1e-6 | tee -a "$SUM"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "$r: --gpus 1 vs plain"
done
rm -rf "$RUNS/dp1_bf16wire"
$AV train "${TRAIN[@]}" --recipe bf16 --device cuda --gpus 1 --grad-dtype bf16 --out "$RUNS/dp1_bf16wire" >"$RUNS/dp1_bf16wire.out" 2>&1 \
    || note_fail "--grad-dtype bf16: $(tail -1 "$RUNS/dp1_bf16wire.out")"
compare "$RUNS/plain_bf16/log.csv" "$RUNS/dp1_bf16wire/log.csv" "bf16: --gpus 1 --grad-dtype bf16 vs plain" 2e-2 | tee -a "$SUM"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "--grad-dtype bf16 vs plain"

step "the --gpus 1 checkpoint resumed on the CPU and on the GPU without data parallel"
for where in cpu cuda; do
    rm -rf "$RUNS/resume_$where" && cp -r "$RUNS/dp1_averis" "$RUNS/resume_$where"
    if $AV train "${TRAIN[@]}" --steps 34 --recipe averis --device $where --out "$RUNS/resume_$where" --resume >"$RUNS/resume_$where.out" 2>&1; then
        say "resumed the --gpus 1 checkpoint on $where to step $(tail -1 "$RUNS/resume_$where/log.csv" | cut -d, -f1), loss $(tail -1 "$RUNS/resume_$where/log.csv" | cut -d, -f4)"
    else
        note_fail "resume on $where: $(tail -1 "$RUNS/resume_$where.out")"
    fi
done

step "a dead peer: rank 0 of a 2-rank world alone (AVERIS_COMM_TIMEOUT=15)"
rm -rf "$RUNS/lonely"
t0=$(date +%s)
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 AVERIS_COMM_TIMEOUT=15 timeout 120 $AV train "${TRAIN[@]}" --recipe bf16 --device cuda --out "$RUNS/lonely" >"$RUNS/lonely.out" 2>&1
rc=$? dt=$(( $(date +%s) - t0 ))
say "lonely rank: exit $rc after ${dt} s: $(grep -m1 'rank 0' "$RUNS/lonely.out" | cut -c1-250)"
[[ $rc -ne 0 && $rc -ne 124 ]] && grep -q "did not join\|timeout" "$RUNS/lonely.out" || note_fail "lonely rank (exit $rc) did not fail clearly"

if [[ $NGPU -ge 2 ]]; then
    step "2 GPUs: --gpus 2 × batch 4 vs --gpus 1 × batch 8 (fp32 recipe), and a killed rank"
    rm -rf "$RUNS/dp2" "$RUNS/dp1_fp32"
    $AV train "${TRAIN[@]}" --recipe fp32 --device cuda --gpus 1 --out "$RUNS/dp1_fp32" >"$RUNS/dp1_fp32.out" 2>&1 || note_fail "dp1 fp32"
    $AV train "${TRAIN[@]}" --batch 4 --recipe fp32 --device cuda --gpus 2 --out "$RUNS/dp2" >"$RUNS/dp2.out" 2>&1 || note_fail "--gpus 2: $(tail -2 "$RUNS/dp2.out")"
    compare "$RUNS/dp1_fp32/log.csv" "$RUNS/dp2/log.csv" "fp32: --gpus 2 × 4 vs --gpus 1 × 8" 1e-3 | tee -a "$SUM"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "--gpus 2 vs --gpus 1"
    rm -rf "$RUNS/kill"
    AVERIS_DP_GRACE=60 AVERIS_COMM_TIMEOUT=30 $AV train "${TRAIN[@]}" --steps 100000 --recipe bf16 --device cuda --gpus 2 --out "$RUNS/kill" >"$RUNS/kill.out" 2>&1 &
    lp=$!
    for _ in $(seq 120); do [[ -f $RUNS/kill/log.csv && $(wc -l <"$RUNS/kill/log.csv") -ge 5 ]] && break; sleep 0.5; done
    victim=$(pgrep -P $lp | sed -n 2p)
    t0=$(date +%s)
    [[ -n $victim ]] && kill -9 "$victim"
    ( sleep 150; kill -9 $lp 2>/dev/null ) & guard=$!
    wait $lp; rc=$?
    kill $guard 2>/dev/null
    dt=$(( $(date +%s) - t0 ))
    say "killed rank 1 (pid ${victim:-none}): the launcher exited $rc after ${dt} s; $(grep -m1 -i 'nccl rank 0\|rank 0 of 2' "$RUNS/kill.out" | cut -c1-250)"
    [[ $rc -ne 0 && $dt -lt 100 ]] || note_fail "killed rank: exit $rc after $dt s"
else
    say "killed-rank test with --gpus 2 skipped: $NGPU GPU (the lonely-rank test above covers a dead peer on one GPU)"
fi

fi # steps 2-4

if [[ $MODE != quick ]]; then
    step "bench: tokens/s, --gpus 1 (data-parallel path) vs plain, one GPU"
    echo "config,batch,seq,steps,plain_tokens_per_s,dp1_tokens_per_s,dp1_over_plain" >"$OUT/bench_nccl.csv"
    # medium: ~86M parameters (a 0.6B checkpoint would take longer to write than the steps take)
    cat >"$RUNS/medium.json" <<'EOF'
{"vocab_size": 4096, "hidden_size": 768, "intermediate_size": 2304, "num_hidden_layers": 12,
 "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 2048,
 "tie_word_embeddings": true}
EOF
    for spec in "small 16 256 30" "$RUNS/medium.json 8 1024 20"; do
        read -r cfg b t n <<<"$spec"
        tag=$(basename "$cfg" .json) # a config file's path is no file-name part
        for how in plain dp1; do
            extra=(); [[ $how == dp1 ]] && extra=(--gpus 1)
            rm -rf "$RUNS/bench_$how"
            $AV train --config $cfg --data "$DATA" --recipe averis --device cuda "${extra[@]}" --batch $b --seq $t --steps $n \
                --val-every 0 --lr 3e-4 --out "$RUNS/bench_$how" >"$RUNS/bench_${tag}_$how.out" 2>&1 || note_fail "bench $tag $how: $(tail -1 "$RUNS/bench_${tag}_$how.out")"
            # steady state: the mean of the per-step tokens/s after the first 3 steps
            eval "tps_$how=$(python3 -c "import csv,sys; r=list(csv.DictReader(open('$RUNS/bench_$how/log.csv')))[3:]; print(sum(float(x['tokens_per_s']) for x in r)/max(len(r),1))" 2>/dev/null || echo 0)"
        done
        ratio=$(python3 -c "print(f'{$tps_dp1/$tps_plain:.4f}' if $tps_plain else 'nan')")
        echo "$tag,$b,$t,$n,$tps_plain,$tps_dp1,$ratio" >>"$OUT/bench_nccl.csv"
        say "bench $tag (batch $b × $t, averis): plain $(printf %.0f $tps_plain) tok/s, --gpus 1 $(printf %.0f $tps_dp1) tok/s, ratio $ratio"
    done
    rm -rf "$RUNS/bench_plain" "$RUNS/bench_dp1"
fi

cp "$RUNS"/*.out "$OUT/" 2>/dev/null
say "device_nccl.sh: $fail failure(s), $(( $(date +%s) - T0 )) s"
exit $fail
