#!/usr/bin/env bash
# device_session.sh [BUDGET_S] — a whole device lease's work, kept alive across
# back-to-back calls (each call at most BUDGET_S seconds, default 560): the
# long GPU jobs run in a background process (setsid) that outlives the call,
# and every call packs what exists so far into $OUT/session.tgz (every 30 s,
# so a call killed at its limit still returns the latest).
#
# First call (nothing under $Q yet):
#   1. build: the library, averis, the CUDA tests and benches (CUDA=1)
#   2. starts the background jobs (below), then runs the checks in the
#      foreground, beside them: test_cuda (kernels bit-exact, the dense and the
#      MoE model vs the CPU), test_cudnn_att, test_analysis_gpu, the MoE's
#      30-step CPU-vs-GPU runs, scripts/device_hf.sh (issue 23: transformers
#      loads a checkpoint, generate == sample, eval --task CPU vs GPU,
#      lm-eval when .wheels/lm_eval is carried)
# Background, in order:
#   a. the corpus (scripts/build_corpus.sh, $CORPUS_MB MB of the Python
#      install's text, 16k BPE, 1% of the documents held out)
#   b. at once: the recipe sweep (scripts/sweep.py: $SWEEP_RECIPES × seeds
#      $SWEEP_SEEDS of $SWEEP_PRESET, $SWEEP_STEPS × 16×1024 tokens, two runs
#      at a time, the mean-bias analysis every 200 steps on bf16 and averis,
#      each finished run scored on a zero-shot task from the held-out split)
#      and the analysis experiment (experiments/analysis/run.sh: the 88M
#      model, bf16, nvfp4, averis, $ANA_STEPS steps, --analyze-every 250)
#   c. then, alone on the GPU: bench_analysis (the analysis step vs 250
#      training steps, 88M shape) and bench_cuda step on moe-small per recipe
# Later calls: wait for the background (packing every 30 s) until the budget.
# Then run report.py locally on what came back (docs/sweep.md,
# experiments/analysis/run.sh --report-only).
# PLAN=verify: instead of all the above, after the build the background runs
# the checks and benches of the GPU features changed since the last lease,
# each script alone on the GPU: scripts/device_analysis.sh (no memcheck),
# scripts/device_moe.sh (GPU part, no memcheck, 7B-A1.5B at 8 then 6
# layers), test_cudnn_att, test_cuda's kernel tests ($VERIFY_CUDA_TESTS),
# scripts/device_nccl.sh quick and bench (N = 1), scripts/device_speed.sh;
# no foreground. VERIFY_PARTS picks among "analysis moe cudnn cuda nccl
# speed" (default all but speed), VERIFY_EXTRA names
# a script run last with the output directory as its argument.
# Knobs: Q (state dir, /tmp/averis_q), SKIP_FG=1 (no foreground checks),
# SWEEP_STEPS (800), ANA_STEPS (3052 = 50M tokens), CORPUS_MB (200).
# Exit status: 0, or 1 when the build failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${1:-560}
T0=$(date +%s)
Q=${Q:-/tmp/averis_q}
OUT=${OUT:-out/device_session}
mkdir -p "$Q/out" "$Q/logs" "$OUT"
OUT=$(cd "$OUT" && pwd)
JOBS=$(nproc 2>/dev/null || echo 8)
SWEEP_PRESET=${SWEEP_PRESET:-qwen3-30m}
SWEEP_STEPS=${SWEEP_STEPS:-800}
SWEEP_RECIPES=${SWEEP_RECIPES:-bf16,nvfp4,nvfp4-rht,averis,averis-rht}
SWEEP_SEEDS=${SWEEP_SEEDS:-1,2}
ANA_STEPS=${ANA_STEPS:-3052}
CORPUS_MB=${CORPUS_MB:-200}
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(date +%T)] $*" | tee -a "$Q/out/session.log"; }

pack() { # the small results: logs, CSVs, per-run logs (no checkpoints)
    (cd "$Q" && tar czf "$OUT/.session.tgz" --ignore-failed-read out logs \
        $(ls -d sweep/sweep.csv sweep/progress.txt sweep/pairing.txt sweep/sweep_args.json sweep/task.jsonl \
              sweep/runs/*/log.csv sweep/runs/*/train.out sweep/runs/*/sweep.json sweep/runs/*/analysis.csv \
              sweep/runs/*/DONE sweep/runs/*/downstream.json sweep/runs/*/downstream.out \
              analysis/*/log.csv analysis/*/analysis.csv corpus/prepare.log corpus/*.json 2>/dev/null) \
        2>/dev/null) && mv "$OUT/.session.tgz" "$OUT/session.tgz"
}

background() {
    source scripts/device_env.sh
    log "bg: corpus"
    if ! AVERIS_BIN=build/averis bash scripts/build_corpus.sh "$Q/corpus" "$CORPUS_MB" >"$Q/logs/corpus.log" 2>&1; then
        log "bg: CORPUS FAILED"; touch "$Q/bg.done"; return
    fi
    log "bg: corpus done: $(grep -E '^corpus:' "$Q/logs/corpus.log" | tail -1)"
    log "bg: sweep and analysis experiment start"
    ( PYTHONUNBUFFERED=1 python3 scripts/sweep.py --out "$Q/sweep" --data "$Q/corpus" --bin build/averis \
        --device cuda --gpus 0 --concurrent 2 --recipes "$SWEEP_RECIPES" --seeds "$SWEEP_SEEDS" \
        --budget-s 3000 --report-s 30 --tail 100 --analyze-every 200 --analyze-recipes bf16,averis \
        --task-kind code --task-limit 500 --task-timeout-s 240 -- \
        --config "$SWEEP_PRESET" --steps "$SWEEP_STEPS" --batch 16 --seq 1024 --lr 1e-3 \
        --val-every $((SWEEP_STEPS / 4)) --log-every 50 >"$Q/logs/sweep.log" 2>&1
      log "bg: sweep exit $?" ) &
    local sp=$!
    ( RUNS="$Q/analysis" bash experiments/analysis/run.sh --data "$Q/corpus" --steps "$ANA_STEPS" --every 250 \
        >"$Q/logs/analysis_run.log" 2>&1
      log "bg: analysis experiment exit $?" ) &
    local ap=$!
    wait $sp $ap
    log "bg: benches alone on the GPU"
    echo "config,recipe,B,T,step_ms,analysis_ms,every,overhead" >"$Q/out/bench_analysis.csv"
    for r in averis bf16; do
        timeout 240 build/bench_analysis --recipe "$r" --every 250 --steps 10 --csv "$Q/out/bench_analysis.csv" \
            >"$Q/out/bench_analysis_$r.log" 2>&1 || log "bg: bench_analysis $r exit $?"
    done
    timeout 300 build/bench_cuda step --config moe-small --batch 8 --seq 1024 --steps 5 >"$Q/out/bench_moe_small.txt" 2>&1 \
        || log "bg: bench moe-small exit $?"
    AVERIS_CUDA_PROFILE=1 timeout 200 build/bench_cuda step --config moe-small --batch 8 --seq 1024 --steps 3 \
        --recipes bf16,averis >"$Q/out/profile_moe_small.txt" 2>&1 || log "bg: profile moe-small exit $?"
    for L in 6 4 2; do # the paper's MoE shape, as many layers as fit (a 29 GB host model for all 16)
        if timeout 300 build/bench_cuda step --config qwen3-moe-7b-a1.5b --layers $L --batch 4 --seq 1024 --steps 3 \
                >"$Q/out/bench_moe_7b_L$L.txt" 2>&1; then break; fi
        log "bg: 7B-A1.5B at $L layers: $(grep -m1 -iE 'cannot|error|fail|memory' "$Q/out/bench_moe_7b_L$L.txt")"
    done
    log "bg: done"
    touch "$Q/bg.done"
}

verify() {
    local parts=" ${VERIFY_PARTS:-analysis moe cudnn cuda nccl} "
    if [[ $parts == *" analysis "* ]]; then
        log "verify: device_analysis.sh"
        OUT="$Q/out/ana" RUNS="$Q/ana_runs" DEVICE_ANALYSIS_MEMCHECK=${DEVICE_ANALYSIS_MEMCHECK:-0} bash scripts/device_analysis.sh >"$Q/out/device_analysis.log" 2>&1
        log "verify: device_analysis exit $?"
    fi
    if [[ $parts == *" speed "* ]]; then
        log "verify: device_speed.sh"
        bash scripts/device_speed.sh "$Q/out/speed" >"$Q/out/device_speed.log" 2>&1
        log "verify: device_speed exit $?"
    fi
    if [[ $parts == *" moe "* ]]; then
        log "verify: device_moe.sh (GPU part)"
        OUT="$Q/out/moe" RUNS="$Q/moe_runs" MOE_PARTS=gpu MOE_MEMCHECK=0 MOE_7B_LAYERS="8 6" bash scripts/device_moe.sh \
            >"$Q/out/device_moe.log" 2>&1
        log "verify: device_moe exit $?"
    fi
    if [[ $parts == *" cudnn "* ]]; then
        timeout 120 build/test_cudnn_att >"$Q/out/test_cudnn_att.log" 2>&1; log "verify: test_cudnn_att exit $? ($(tail -1 "$Q/out/test_cudnn_att.log"))"
    fi
    if [[ $parts == *" cuda "* ]]; then
        for t in ${VERIFY_CUDA_TESTS:-e2m1 bitexact transposed qlinear flash_attention}; do
            timeout 200 build/test_cuda "$t" >>"$Q/out/test_cuda.log" 2>&1; log "verify: test_cuda $t exit $? ($(tail -1 "$Q/out/test_cuda.log"))"
        done
    fi
    if [[ $parts == *" nccl "* ]]; then
        for mode in quick bench; do
            log "verify: device_nccl.sh $mode"
            OUT="$Q/out/nccl" RUNS="$Q/nccl_runs" BUILD=build bash scripts/device_nccl.sh $mode >"$Q/out/device_nccl_$mode.log" 2>&1
            log "verify: device_nccl $mode exit $?"
        done
    fi
    if [[ -n ${VERIFY_EXTRA:-} ]]; then # a script of further checks, its output in the session log
        log "verify: $VERIFY_EXTRA"
        bash "$VERIFY_EXTRA" "$Q/out" >"$Q/out/verify_extra.log" 2>&1
        log "verify: $VERIFY_EXTRA exit $?"
    fi
    log "bg: done"
    touch "$Q/bg.done"
}

foreground() {
    local f=$Q/out
    log "fg: test_cuda"
    timeout 400 build/test_cuda >"$f/test_cuda.log" 2>&1; log "fg: test_cuda exit $? ($(tail -1 "$f/test_cuda.log"))"
    timeout 200 build/test_cudnn_att >"$f/test_cudnn_att.log" 2>&1; log "fg: test_cudnn_att exit $? ($(tail -1 "$f/test_cudnn_att.log"))"
    timeout 300 build/test_analysis_gpu >"$f/test_analysis_gpu.log" 2>&1; log "fg: test_analysis_gpu exit $? ($(tail -1 "$f/test_analysis_gpu.log"))"
    log "fg: device_hf.sh"
    OUT="$f/hf" RUNS="$Q/hf_runs" HF_STEPS=${HF_STEPS:-100} TASK_LIMIT=${TASK_LIMIT:-200} timeout 420 bash scripts/device_hf.sh \
        >"$f/device_hf.log" 2>&1; log "fg: device_hf exit $?"
    log "fg: MoE 30 steps CPU vs GPU"
    OUT="$f/moe" RUNS="$Q/moe_runs" MOE_PARTS=gpu MOE_BENCH=0 timeout 400 bash scripts/device_moe.sh >"$f/device_moe.log" 2>&1
    log "fg: device_moe exit $?"
    touch "$Q/fg.done"
}

if [[ ${1:-} == --bg ]]; then if [[ ${PLAN:-lease} == verify ]]; then verify; else background; fi; exit 0; fi
if [[ ${1:-} == --fg ]]; then source scripts/device_env.sh; foreground; exit 0; fi

source scripts/device_env.sh
if [[ ! -f $Q/built ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$Q/out/gpu.txt"
    log "build"
    if ! make -s -j"$JOBS" "${MAKE_CC[@]}" CUDA=1 all cuda-tests build/test_analysis_gpu build/bench_analysis build/bench_cuda \
            >"$Q/logs/build.log" 2>&1; then
        tail -30 "$Q/logs/build.log"; log "BUILD FAILED"; pack; exit 1
    fi
    grep -E "✓|✗" "$Q/logs/build.log" | head -8 | tee -a "$Q/out/session.log"
    touch "$Q/built"
    log "built in $(elapsed) s"
fi
if [[ ! -f $Q/bg.started ]]; then
    touch "$Q/bg.started"
    setsid nohup bash scripts/device_session.sh --bg >"$Q/logs/bg.log" 2>&1 </dev/null &
    log "background started"
fi
if [[ ! -f $Q/fg.started && ${SKIP_FG:-0} != 1 && ${PLAN:-lease} != verify ]]; then
    touch "$Q/fg.started"
    setsid nohup bash scripts/device_session.sh --fg >"$Q/logs/fg.log" 2>&1 </dev/null &
    log "foreground checks started"
fi
while [[ $(elapsed) -lt $((BUDGET_S - 15)) ]]; do
    pack
    [[ -f $Q/bg.done && ( ! -f $Q/fg.started || -f $Q/fg.done ) ]] && break
    sleep 20
done
tail -3 "$Q/sweep/progress.txt" 2>/dev/null
grep -E "^done:|^analysis:" "$Q/logs/analysis_run.log" 2>/dev/null
cat "$Q/out/session.log"
pack
echo "device_session: $(elapsed) s in this call; background $([[ -f $Q/bg.done ]] && echo done || echo running)"
