#!/usr/bin/env bash
# demo.sh — the README's first command. On a bare Debian machine: installs
# what is missing, builds, prepares the default corpus, trains the `tiny`
# Qwen3 model with every recipe from the same seed and data order, prints a
# table of final validation loss and gap to bf16, plots the loss curves and
# prints a sample. Re-running skips finished runs and resumes killed ones.
#   DEMO_STEPS (default 500), DEMO_OUT (default out/demo), DEMO_SEED (1),
#   DEMO_RECIPES (default "bf16 nvfp4 nvfp4-rht averis averis-rht")
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${DEMO_STEPS:-500}
OUT=${DEMO_OUT:-out/demo}
SEED=${DEMO_SEED:-1}
RECIPES=${DEMO_RECIPES:-bf16 nvfp4 nvfp4-rht averis averis-rht}
t0=$(date +%s)
bash scripts/setup.sh
make -s -j"$(nproc 2>/dev/null || echo 2)" all
bash scripts/get_data.sh data/default
mkdir -p "$OUT"
for r in $RECIPES; do
    dir=$OUT/$r
    final=$(printf '%s/ckpt_%08d/model.safetensors' "$dir" "$STEPS")
    if [[ -f $final ]]; then
        echo "== $r: done already ($dir)"
        continue
    fi
    resume=()
    [[ -f $dir/latest ]] && resume=(--resume)
    echo "== $r"
    build/averis train --config tiny --recipe "$r" --data data/default --out "$dir" --steps "$STEPS" \
        --batch 8 --seq 128 --lr 3e-3 --seed "$SEED" --ckpt-every 100 --val-every $((STEPS / 10)) \
        --log-every $((STEPS / 10)) "${resume[@]}"
done

# table: final validation loss (the last logged one) and gap to bf16
table=$OUT/results.md
{
    echo "| recipe | final val loss | gap to bf16 | mean tokens/s |"
    echo "|---|---|---|---|"
    base=""
    for r in $RECIPES; do
        log=$OUT/$r/log.csv
        [[ -f $log ]] || continue
        read -r v tps < <(awk -F, 'NR > 1 { if ($6 != "") v = $6; s += $7; n++ } END { printf "%s %.0f\n", v, s / n }' "$log")
        [[ $r == bf16 ]] && base=$v
        gap="–"
        [[ -n $base && $r != bf16 ]] && gap=$(awk -v a="$v" -v b="$base" 'BEGIN { printf "%+.2f%%", 100 * (a - b) / b }')
        echo "| $r | $v | $gap | $tps |"
    done
} >"$table"
echo
echo "tiny Qwen3, $STEPS steps × 8×128 tokens, seed $SEED ($(date +%F), $(nproc) cores):"
cat "$table"

# plot (matplotlib; installed on demand, skipped if it cannot be)
py=""
for cand in python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import matplotlib' 2>/dev/null; then py=$cand; break; fi
done
if [[ -z $py ]] && command -v python3 >/dev/null; then
    python3 -m pip install -q --user matplotlib >/dev/null 2>&1 && py=python3 || true
fi
if [[ -z $py ]]; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y -qq python3-matplotlib >/dev/null 2>&1 && /usr/bin/python3 -c 'import matplotlib' 2>/dev/null && py=/usr/bin/python3 || true
fi
if [[ -n $py ]]; then
    "$py" scripts/plot_losses.py "$OUT" "$OUT/loss_curves.png"
else
    echo "plot: skipped (no matplotlib could be installed)"
fi

echo
echo "sample (averis, temperature 0.8):"
build/averis sample "$OUT/averis" --prompt "It is a truth universally acknowledged" --tokens 60 --seed "$SEED" 2>/dev/null \
    || build/averis sample "$OUT/$(echo "$RECIPES" | awk '{print $1}')" --tokens 60 --seed "$SEED"
echo
echo "demo: $(( $(date +%s) - t0 )) s; runs, logs and checkpoints under $OUT"
