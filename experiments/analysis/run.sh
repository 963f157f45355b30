#!/usr/bin/env bash
# run.sh — the mean-bias analysis at training scale (issue 24), on a GPU:
# bf16, nvfp4 and averis on the 88M model (config_88m.json: width 768, 12
# layers, 12/4 heads, FFN 2048, vocabulary 16384, tied embeddings), 16×1024
# tokens a step, with the GPU analysis (--analyze-every) on the first
# validation batch; then the plots and report.md (report.py).
#
#   experiments/analysis/run.sh [--data DIR] [--steps N] [--every K] [--recipes "bf16 nvfp4 averis"]
#                               [--out DIR] [--report-only]
#
# --data: a corpus directory (train_*.bin, val_*.bin, tokenizer.bpe) whose
# token ids are < 16384, e.g. the one scripts/build_corpus.sh builds; when
# DIR is missing and scripts/build_corpus.sh exists it is built there;
# default data/default. Token budget: an 88M step of 16384 tokens takes
# ~85 ms (bf16) to ~110 ms (nvfp4/averis) on an H100/H200, so the default
# 1800 steps (29.5M tokens) take ~2.5–3.5 device minutes per recipe plus the
# analyses (~0.3 s each); 50M tokens is --steps 3052 (~4.5–6 minutes a
# recipe: run one recipe per device call, --recipes bf16 etc.; a rerun
# resumes or skips what is done).
# Outputs: $OUT/RECIPE/{log.csv,analysis.csv,ckpt_*}, copies of the CSVs in
# experiments/analysis/ (analysis_RECIPE.csv, log_RECIPE.csv), and where
# matplotlib is importable the PNGs and report.md (else run
#   python3 experiments/analysis/report.py experiments/analysis
# on any machine with matplotlib afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=data/default; STEPS=1800; EVERY=200; RECIPES="bf16 nvfp4 averis"; RUNS=${RUNS:-out/analysis}; REPORT_ONLY=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --data) DATA=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --every) EVERY=$2; shift 2 ;;
        --recipes) RECIPES=$2; shift 2 ;;
        --out) RUNS=$2; shift 2 ;;
        --report-only) REPORT_ONLY=1; shift ;;
        -h|--help) sed -n 2,26p "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
EXP=experiments/analysis
if [[ $REPORT_ONLY == 0 ]]; then
    if ! ls "$DATA"/train_*.bin >/dev/null 2>&1; then
        if [[ -x scripts/build_corpus.sh || -f scripts/build_corpus.sh ]]; then
            echo "run.sh: building the corpus in $DATA (scripts/build_corpus.sh)"
            bash scripts/build_corpus.sh "$DATA"
        else
            echo "run.sh: no corpus in $DATA (train_*.bin) and no scripts/build_corpus.sh" >&2; exit 1
        fi
    fi
    [[ -x build/averis ]] || make -s -j"$(nproc)" all
    for r in $RECIPES; do
        out=$RUNS/$r
        if [[ -f $out/ckpt_$(printf %08d "$STEPS")/model.safetensors ]]; then
            echo "run.sh: $r done ($out)"
        else
            resume=(); [[ -f $out/latest ]] && resume=(--resume)
            echo "run.sh: $r, $STEPS steps × 16×1024 tokens = $((STEPS * 16384)) tokens, analysis every $EVERY ($(date +%T))"
            build/averis train --device cuda --config $EXP/config_88m.json --recipe "$r" --data "$DATA" --out "$out" \
                --steps "$STEPS" --batch 16 --seq 1024 --lr 1e-3 --seed 1 --ckpt-every "$STEPS" \
                --analyze-every "$EVERY" --log-every "$((STEPS / 10))" "${resume[@]}"
        fi
        cp "$out/analysis.csv" "$EXP/analysis_$r.csv"
        cp "$out/log.csv" "$EXP/log_$r.csv"
    done
fi
if python3 -c "import matplotlib" 2>/dev/null; then
    python3 $EXP/report.py $EXP
else
    echo "run.sh: no matplotlib here; for the plots and report.md run: python3 $EXP/report.py $EXP"
fi
