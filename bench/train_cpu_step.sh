#!/usr/bin/env bash
# train_cpu_step.sh [BIN...] — CPU seconds per training step of the demo's
# run (tiny, batch 8, seq 128, 2 threads) for bf16 and the FP4 recipes:
# (cpu(2+N steps) − cpu(2 steps)) / N (N=$STEPS, default 20), from /usr/bin/time's user+sys, so a
# shared host's load does not enter. AVERIS_IMPL=avx2 forces the AVX2
# kernels. Prints one line per binary and recipe plus the ratio to bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=${*:-build/averis}
DATA=${DATA:-data/default}
STEPS=${STEPS:-20}
[[ -f $DATA/train_000000.bin ]] || { echo "train_cpu_step.sh: no data in $DATA (set DATA=)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=passive
cpu() { # bin recipe steps → CPU seconds
    /usr/bin/time -f '%U %S' -o "$TMP/t" "$1" train --config tiny --recipe "$2" --data "$DATA" --out "$TMP/o" \
        --steps "$3" --batch 8 --seq 128 --lr 3e-3 --seed 1 --ckpt-every 1000 --log-every 1000 --val-every 1000 \
        >/dev/null 2>&1
    rm -rf "$TMP/o"
    awk '{ print $1 + $2 }' "$TMP/t"
}
echo "load $(cut -d' ' -f1-3 /proc/loadavg), AVERIS_IMPL=${AVERIS_IMPL:-default}, threads $OMP_NUM_THREADS"
for bin in $BINS; do
    base=""
    for r in bf16 nvfp4 nvfp4-rht averis averis-rht; do
        a=$(cpu "$bin" "$r" 2)
        b=$(cpu "$bin" "$r" $((2 + STEPS)))
        s=$(awk -v a="$a" -v b="$b" -v n="$STEPS" 'BEGIN { printf "%.4f", (b - a) / n }')
        [[ -z $base ]] && base=$s
        awk -v bin="$bin" -v r="$r" -v s="$s" -v base="$base" \
            'BEGIN { printf "%-28s %-11s %.3f CPU s/step  %.2fx bf16\n", bin, r, s, s / base }'
    done
done
