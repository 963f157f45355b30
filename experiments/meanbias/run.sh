#!/usr/bin/env bash
# run.sh — the mean-bias experiment (issue 7): trains the demo's `tiny` model
# with bf16 and averis for STEPS steps, recording the analysis rows every
# EVERY steps, then analyzes the final checkpoints and draws the plots.
# Outputs under experiments/meanbias/ (CSV copies and PNGs) and out/meanbias/.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-500}
EVERY=${EVERY:-50}
OUT=${OUT:-out/meanbias}
make -s all
bash scripts/get_data.sh data/default
for r in bf16 averis; do
    if [[ ! -f $OUT/$r/ckpt_$(printf %08d "$STEPS")/model.safetensors ]]; then
        resume=(); [[ -f $OUT/$r/latest ]] && resume=(--resume)
        build/averis train --config tiny --recipe "$r" --data data/default --out "$OUT/$r" --steps "$STEPS" \
            --batch 8 --seq 128 --lr 3e-3 --seed 1 --ckpt-every 100 --analyze-every "$EVERY" \
            --log-every "$((STEPS / 5))" "${resume[@]}"
    fi
    cp "$OUT/$r/analysis.csv" "experiments/meanbias/analysis_$r.csv"
done
python3 scripts/plot_analysis.py experiments/meanbias experiments/meanbias/analysis_bf16.csv experiments/meanbias/analysis_averis.csv
