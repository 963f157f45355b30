#!/usr/bin/env bash
# device_nccl.sh — the data-parallel (NCCL, ZeRO-1) path on a GPU machine
# (issue 16), in one call; about 3-4 minutes on one H100/H200 (half of it the
# build):
#   1. build with NCCL (CUDNN=0 to save time; the features line must say ✓ NCCL)
#   2. tiny, 30 steps: `--device cuda --gpus 1` (the gradients all-reduced in
#      5 buckets overlapped with the backward, --dp-buckets 0.25) vs the plain
#      `--device cuda` (bf16 and averis recipes): losses compared (expected
#      bit-identical at N = 1; the bound is 1e-6 relative); buckets vs one
#      all-reduce (--dp-buckets 0), fp32 and BF16 on the wire: identical logs
#      required; --grad-dtype bf16 vs plain (bound 2e-2); the moments the rank
#      reports (at N = 1: all of them, 0 bytes saved); test_cuda's dp_ tests
#      when BUILD has it (the backward's segments final when reported,
#      ZeRO-1 moment windows on the GPU = one model, bit for bit)
#   3. the 1-GPU data-parallel checkpoint resumed on the CPU, and on the GPU
#      without data parallel
#   4. failure handling: one rank of a 2-rank world alone (a dead peer on one
#      GPU) must exit with a clear error within the timeout, not hang; with 2+
#      GPUs also a --gpus 2 run whose rank 1 is SIGKILLed mid-run,
#      --gpus 2 × batch 4 vs --gpus 1 × batch 8, and a --gpus 2 run stopped
#      and resumed (the gathered moments) = the straight one, identical logs
#   5. bench: tokens/s through the data-parallel path, in one all-reduce
#      (--dp-buckets 0) and in 25 MiB buckets (the default), vs the plain path
#      on one GPU (the overhead at N = 1), small (~27M) and an ~86M config
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

# compare.py A/log.csv B/log.csv TAG BOUND: max |Δloss|/loss over the steps and the val losses (BOUND 0: identical logs)
compare() {
    python3 - "$@" <<'EOF'
import csv, sys
a = list(csv.DictReader(open(sys.argv[1]))); b = list(csv.DictReader(open(sys.argv[2])))
tag, bound = sys.argv[3], float(sys.argv[4])
ok = len(a) == len(b) and len(a) > 0
d = [abs(float(x['loss']) - float(y['loss'])) / float(x['loss']) for x, y in zip(a, b)]
n = [abs(float(x['grad_norm']) - float(y['grad_norm'])) / max(float(x['grad_norm']), 1e-30) for x, y in zip(a, b)]
va = [float(x['val_loss']) for x in a if x['val_loss']]; vb = [float(y['val_loss']) for y in b if y['val_loss']]
same = all(x['loss'] == y['loss'] and x['grad_norm'] == y['grad_norm'] and x['val_loss'] == y['val_loss'] for x, y in zip(a, b))
dv = max([abs(x - y) / x for x, y in zip(va, vb)] or [0])
ok = ok and max(d) <= bound and max(n) <= max(bound, 1e-6) * 10 and dv <= bound and (same or bound > 0)  # bound 0: identical
print(f"{tag}: {len(a)} steps, max rel loss diff {max(d):.2e}, grad norm {max(n):.2e}, val {dv:.2e}"
      f" ({'identical logs' if same else 'not identical'}); bound {bound:g}: {'ok' if ok else 'OUT OF BOUNDS'}")
sys.exit(0 if ok else 1)
EOF
}

TRAIN=(--config tiny --data "$DATA" --steps 30 --batch 8 --seq 128 --lr 1e-3 --seed 1 --val-every 15 --val-batches 4 --log-every 15)
if [[ $MODE != bench ]]; then
step "tiny, 30 steps: --gpus 1 (data-parallel path) vs plain"
# tiny's 5.2 MB of gradients in 0.25 MiB buckets: the head with layer 3, layers 2, 1, 0, the embedding
BUCKETS=(--dp-buckets 0.25)
for r in bf16 averis; do
    rm -rf "$RUNS/plain_$r" "$RUNS/dp1_$r"
    $AV train "${TRAIN[@]}" --recipe $r --device cuda --out "$RUNS/plain_$r" >"$RUNS/plain_$r.out" 2>&1 || note_fail "plain $r: $(tail -1 "$RUNS/plain_$r.out")"
    $AV train "${TRAIN[@]}" --recipe $r --device cuda --gpus 1 "${BUCKETS[@]}" --out "$RUNS/dp1_$r" >"$RUNS/dp1_$r.out" 2>&1 || note_fail "--gpus 1 $r: $(tail -1 "$RUNS/dp1_$r.out")"
    grep -m1 "data parallel" "$RUNS/dp1_$r.out" | sed 's/^train: //' | cut -c1-400
    compare "$RUNS/plain_$r/log.csv" "$RUNS/dp1_$r/log.csv" "$r: --gpus 1 (buckets) vs plain" 1e-6 | tee -a "$SUM"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "$r: --gpus 1 vs plain"
done
# the moments rank 0 of 1 reports holding: all n of them (8·n bytes), none saved
python3 - "$RUNS/dp1_bf16.out" <<'EOF' | tee -a "$SUM"
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"ZeRO-1 shard of (\d+) of (\d+) parameters, AdamW moments of (\d+) parameters on this rank \((\d+) bytes; (\d+) bytes", t)
if not m: print("FAILED: no moments in the data-parallel line"); sys.exit(1)
S, n, held, nb, saved = map(int, m.groups())
ok = held == n and nb == 8 * n and saved == 0
print(f"moments at N = 1: {held} of {n} parameters, {nb} bytes, {saved} saved: {'ok' if ok else 'FAILED (want all, 8·n bytes, 0 saved)'}")
sys.exit(0 if ok else 1)
EOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "the moments reported at N = 1"
step "buckets overlapped with the backward vs one all-reduce after it (must be identical at N = 1)"
# fp32 on the wire in buckets ran above (dp1_bf16); one all-reduce, and BF16 on the wire both ways, here
for run in "0 fp32" "0 bf16" "0.25 bf16"; do
    read -r b wire <<<"$run"
    rm -rf "$RUNS/b${b}_$wire"
    $AV train "${TRAIN[@]}" --recipe bf16 --device cuda --gpus 1 --grad-dtype $wire --dp-buckets $b --out "$RUNS/b${b}_$wire" \
        >"$RUNS/b${b}_$wire.out" 2>&1 || note_fail "--dp-buckets $b --grad-dtype $wire: $(tail -1 "$RUNS/b${b}_$wire.out")"
done
grep -h -m1 -o "gradients in [a-z0-9]* in [^;]*" "$RUNS/dp1_bf16.out" "$RUNS/b0.25_bf16.out"
compare "$RUNS/b0_fp32/log.csv" "$RUNS/dp1_bf16/log.csv" "bf16, fp32 wire: --dp-buckets 0.25 vs 0" 0 | tee -a "$SUM"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "fp32 wire: buckets vs one all-reduce"
compare "$RUNS/b0_bf16/log.csv" "$RUNS/b0.25_bf16/log.csv" "bf16, bf16 wire: --dp-buckets 0.25 vs 0" 0 | tee -a "$SUM"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "bf16 wire: buckets vs one all-reduce"
compare "$RUNS/plain_bf16/log.csv" "$RUNS/b0.25_bf16/log.csv" "bf16: --gpus 1 --grad-dtype bf16 vs plain" 2e-2 | tee -a "$SUM"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "--grad-dtype bf16 vs plain"
if [[ -x $BUILD/test_cuda ]]; then
    step "test_cuda dp_: the backward's segments, ZeRO-1 moment windows on the GPU"
    $BUILD/test_cuda dp_ 2>&1 | tee "$RUNS/test_cuda_dp.out" | tail -8
    [[ ${PIPESTATUS[0]} -eq 0 ]] && say "test_cuda dp_: $(tail -1 "$RUNS/test_cuda_dp.out")" || note_fail "test_cuda dp_"
fi

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
    say "--gpus 2, rank 0: $(grep -m1 -o "AdamW moments of [^)]*)" "$RUNS/dp2.out")"
    # ZeRO-1's gathered checkpoint: stopped at 15 and resumed on 2 GPUs = straight (5 buckets, overlapped)
    rm -rf "$RUNS/dp2b" "$RUNS/dp2r"
    $AV train "${TRAIN[@]}" --batch 4 --recipe fp32 --device cuda --gpus 2 "${BUCKETS[@]}" --out "$RUNS/dp2b" >"$RUNS/dp2b.out" 2>&1 || note_fail "--gpus 2 buckets"
    $AV train "${TRAIN[@]}" --batch 4 --recipe fp32 --device cuda --gpus 2 "${BUCKETS[@]}" --stop-after 15 --out "$RUNS/dp2r" >"$RUNS/dp2r.out" 2>&1 \
        && $AV train "${TRAIN[@]}" --batch 4 --recipe fp32 --device cuda --gpus 2 "${BUCKETS[@]}" --resume --out "$RUNS/dp2r" >>"$RUNS/dp2r.out" 2>&1 \
        || note_fail "--gpus 2 stop and resume: $(tail -2 "$RUNS/dp2r.out")"
    compare "$RUNS/dp2b/log.csv" "$RUNS/dp2r/log.csv" "fp32, 2 GPUs: stopped at 15 and resumed vs straight" 0 | tee -a "$SUM"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "--gpus 2 resume vs straight"
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
    step "bench: tokens/s, --gpus 1 (data-parallel path: one all-reduce, and 25 MiB buckets) vs plain, one GPU"
    echo "config,batch,seq,steps,plain_tokens_per_s,dp1_tokens_per_s,dp1_over_plain,dp1b_tokens_per_s,dp1b_over_plain,dp1b_over_dp1" \
        >"$OUT/bench_nccl.csv"
    # medium: ~86M parameters (a 0.6B checkpoint would take longer to write than the steps take)
    cat >"$RUNS/medium.json" <<'EOF'
{"vocab_size": 4096, "hidden_size": 768, "intermediate_size": 2304, "num_hidden_layers": 12,
 "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 2048,
 "tie_word_embeddings": true}
EOF
    for spec in "small 16 256 30" "$RUNS/medium.json 8 1024 20"; do
        read -r cfg b t n <<<"$spec"
        tag=$(basename "$cfg" .json) # a config file's path is no file-name part
        for how in plain dp1 dp1b; do # dp1: one all-reduce after the backward; dp1b: buckets of 25 MiB (the default)
            extra=(); [[ $how == dp1 ]] && extra=(--gpus 1 --dp-buckets 0); [[ $how == dp1b ]] && extra=(--gpus 1 --dp-buckets 25)
            rm -rf "$RUNS/bench_$how"
            $AV train --config $cfg --data "$DATA" --recipe averis --device cuda "${extra[@]}" --batch $b --seq $t --steps $n \
                --val-every 0 --lr 3e-4 --out "$RUNS/bench_$how" >"$RUNS/bench_${tag}_$how.out" 2>&1 || note_fail "bench $tag $how: $(tail -1 "$RUNS/bench_${tag}_$how.out")"
            # steady state: the mean of the per-step tokens/s after the first 3 steps
            eval "tps_$how=$(python3 -c "import csv,sys; r=list(csv.DictReader(open('$RUNS/bench_$how/log.csv')))[3:]; print(sum(float(x['tokens_per_s']) for x in r)/max(len(r),1))" 2>/dev/null || echo 0)"
        done
        ratio=$(python3 -c "print(f'{$tps_dp1/$tps_plain:.4f}' if $tps_plain else 'nan')")
        ratio_b=$(python3 -c "print(f'{$tps_dp1b/$tps_plain:.4f}' if $tps_plain else 'nan')")
        ratio_bb=$(python3 -c "print(f'{$tps_dp1b/$tps_dp1:.4f}' if $tps_dp1 else 'nan')")
        echo "$tag,$b,$t,$n,$tps_plain,$tps_dp1,$ratio,$tps_dp1b,$ratio_b,$ratio_bb" >>"$OUT/bench_nccl.csv"
        say "bench $tag (batch $b × $t, averis): plain $(printf %.0f $tps_plain) tok/s, --gpus 1 one all-reduce $(printf %.0f $tps_dp1) ($ratio), 25 MiB buckets $(printf %.0f $tps_dp1b) ($ratio_b; buckets / one all-reduce $ratio_bb)"
        grep -m1 -o "gradients in [a-z0-9]* in [^;]*" "$RUNS/bench_${tag}_dp1b.out"
    done
    rm -rf "$RUNS/bench_plain" "$RUNS/bench_dp1" "$RUNS/bench_dp1b"
fi

cp "$RUNS"/*.out "$OUT/" 2>/dev/null
say "device_nccl.sh: $fail failure(s), $(( $(date +%s) - T0 )) s"
exit $fail
