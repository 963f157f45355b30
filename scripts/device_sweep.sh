#!/usr/bin/env bash
# device_sweep.sh [BUDGET_S] — the recipe sweep on the GPU machine, in calls
# of at most BUDGET_S seconds (default 540: a 10-minute device call with room
# to spare). Each call, from where the last one stopped (everything lives in
# $SWEEP_DIR, default /tmp/averis_sweep, which a warm machine keeps between
# back-to-back calls):
#   1. builds averis with the CUDA path into $SWEEP_DIR/build (skipped when the
#      sources have not changed; no cuDNN: the model does not use it)
#   2. builds the corpus (scripts/build_corpus.sh: the Python install's text,
#      $CORPUS_MB MB, 1% of the documents held out) unless it is there
#   3. runs scripts/sweep.py until the budget: $RECIPES × $SEEDS of $PRESET,
#      $STEPS steps of $BATCH × $SEQ tokens, $CONCURRENT runs at once per GPU,
#      one GPU each where several exist; unfinished runs checkpoint at the
#      budget (SIGTERM) and resume in the next call
#      and scores every finished run on a zero-shot task (averis eval --task,
#      on its GPU): $TASK, else one built by make_tasks.py from the corpus's
#      held-out files ($TASK_KIND, default code: the corpus is mostly Python),
#      its first $TASK_LIMIT items (500; 0: all); NO_TASK=1 skips it
#   4. copies to $OUT: sweep.csv, progress.txt, pairing.txt, sweep.log,
#      logs.tar.gz (every run's log.csv, train.out, analysis.csv; the corpus
#      and build logs) and, once every run is done, report.tar.gz
#      (experiments/fidelity/report.py: report.md and plots)
# Call it again (same settings!) until the 'sweep:' line says all runs are
# done. Exit status: 0 when no run failed (finished or not), 1 otherwise.
# Expected (the default plan, docs/sweep.md): build ~1-2 min and corpus
# ~1 min in the first call; 10 runs × 13.1M tokens of qwen3-30m at an
# estimated 400-500k tokens/s in all ≈ 5.5 min of training: two calls,
# ≈ 8-9 minutes of device time.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${1:-540}
T_START=$(date +%s)
OUT=${OUT:-out/device_sweep}
SWEEP_DIR=${SWEEP_DIR:-/tmp/averis_sweep}
PRESET=${PRESET:-qwen3-30m}
STEPS=${STEPS:-800}
BATCH=${BATCH:-16}
SEQ=${SEQ:-1024}
LR=${LR:-1e-3}
RECIPES=${RECIPES:-bf16,nvfp4,nvfp4-rht,averis,averis-rht}
SEEDS=${SEEDS:-1,2}
CONCURRENT=${CONCURRENT:-2}
CORPUS_MB=${CORPUS_MB:-200}
ANALYZE_EVERY=${ANALYZE_EVERY:-0}
TASK=${TASK:-}
TASK_KIND=${TASK_KIND:-code}
TASK_LIMIT=${TASK_LIMIT:-500}
TASK_OPTS=(--task-kind "$TASK_KIND" --task-limit "$TASK_LIMIT")
[[ -n $TASK ]] && TASK_OPTS+=(--task "$TASK")
[[ ${NO_TASK:-0} == 1 ]] && TASK_OPTS=(--no-task)
JOBS=$(nproc 2>/dev/null || echo 8)
DEVICE=${DEVICE:-cuda}   # cpu: a dry run of this script on a machine without a GPU (with a small PRESET)
mkdir -p "$OUT" "$SWEEP_DIR"
OUT=$(cd "$OUT" && pwd)
BUILD=$SWEEP_DIR/build
LOGS=$SWEEP_DIR/logs
mkdir -p "$LOGS"
elapsed() { echo $(( $(date +%s) - T_START )); }
echo "device_sweep: budget ${BUDGET_S} s; $PRESET, $RECIPES × seeds $SEEDS, $STEPS steps × $BATCH×$SEQ, lr $LR, $CONCURRENT at once"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "device_sweep: no nvidia-smi"

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)

# 1. build, unless the sources are those of the last build
SRC_HASH=$(find Makefile include src tools cuda -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name Makefile \) \
           -print0 | sort -z | xargs -0 cat | sha1sum | cut -c1-16)
if [[ -x $BUILD/averis && "$(cat "$BUILD/.src_hash" 2>/dev/null)" == "$SRC_HASH" ]]; then
    echo "device_sweep: build is current ($SRC_HASH)"
else
    echo "device_sweep: building ($SRC_HASH) ..."
    if ! make -s -j"$JOBS" "${MAKE_CC[@]}" BUILD="$BUILD" CUDA=$([[ $DEVICE == cuda ]] && echo 1 || echo 0) CUDNN=0 all >"$LOGS/build.log" 2>&1; then
        tail -30 "$LOGS/build.log"; echo "device_sweep: BUILD FAILED"; cp "$LOGS/build.log" "$OUT/"; exit 1
    fi
    echo "$SRC_HASH" >"$BUILD/.src_hash"
    echo "device_sweep: built in $(elapsed) s"
fi

# 2. corpus
if ! AVERIS_BIN=$BUILD/averis bash scripts/build_corpus.sh "$SWEEP_DIR/corpus" "$CORPUS_MB" >"$LOGS/corpus.log" 2>&1; then
    tail -20 "$LOGS/corpus.log"; echo "device_sweep: CORPUS FAILED"; cp "$LOGS/corpus.log" "$OUT/"; exit 1
fi
grep -E "^corpus:|prepared|time:" "$LOGS/corpus.log"
cp "$SWEEP_DIR/corpus/prepare.log" "$LOGS/prepare.log" 2>/dev/null

# 3. the sweep, until the budget (30 s kept for the copies)
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[[ $NGPU -ge 1 ]] || NGPU=1
GPUS=$(seq -s, 0 $((NGPU - 1)))
LEFT=$(( BUDGET_S - $(elapsed) - 30 ))
SWEEP_RC=0
if [[ $LEFT -lt 60 ]]; then
    echo "device_sweep: only $LEFT s left in this call; call again to train"
else
    VAL_EVERY=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))
    PYTHONUNBUFFERED=1 python3 scripts/sweep.py --out "$SWEEP_DIR/sweep" --data "$SWEEP_DIR/corpus" --bin "$BUILD/averis" \
        --device "$DEVICE" --gpus "$GPUS" --concurrent "$CONCURRENT" --recipes "$RECIPES" --seeds "$SEEDS" \
        --budget-s "$LEFT" --stop-grace-s 25 --min-start-s 40 --tail 100 --report-s 30 \
        --analyze-every "$ANALYZE_EVERY" --analyze-recipes bf16,averis "${TASK_OPTS[@]}" -- \
        --config "$PRESET" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" --lr "$LR" \
        --val-every "$VAL_EVERY" --log-every 50 2>&1 | tee -a "$LOGS/sweep.log"
    SWEEP_RC=${PIPESTATUS[0]}
fi

# 4. results to $OUT (at most 8 files)
cp "$SWEEP_DIR/sweep/sweep.csv" "$SWEEP_DIR/sweep/progress.txt" "$SWEEP_DIR/sweep/pairing.txt" "$OUT/" 2>/dev/null
cp "$LOGS/sweep.log" "$OUT/" 2>/dev/null
(cd "$SWEEP_DIR" && tar czf "$OUT/logs.tar.gz" --ignore-failed-read logs sweep/sweep_args.json sweep/sweep.csv sweep/pairing.txt \
    $(cd "$SWEEP_DIR" && ls -d sweep/runs/*/log.csv sweep/runs/*/train.out sweep/runs/*/sweep.json sweep/runs/*/analysis.csv sweep/runs/*/DONE \
        sweep/runs/*/downstream.json sweep/runs/*/downstream.out 2>/dev/null)) \
    || echo "device_sweep: tar of the logs failed"
if [[ -f $SWEEP_DIR/sweep/sweep.csv ]] && ! grep -qE ',(partial|pending|failed),' "$SWEEP_DIR/sweep/sweep.csv"; then
    rm -rf "$SWEEP_DIR/report"
    if python3 experiments/fidelity/report.py "$SWEEP_DIR/sweep" --out "$SWEEP_DIR/report" >"$LOGS/report.log" 2>&1; then
        (cd "$SWEEP_DIR" && tar czf "$OUT/report.tar.gz" report) && echo "device_sweep: report in report.tar.gz"
    else
        echo "device_sweep: report.py failed:"; tail -5 "$LOGS/report.log"
    fi
fi
echo "device_sweep: $(elapsed) s in this call"
exit $SWEEP_RC
