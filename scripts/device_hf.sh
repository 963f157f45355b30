#!/usr/bin/env bash
# device_hf.sh — issue 23 on a GPU machine, in one call (docs/huggingface.md):
#   1. build averis (CUDA when nvcc is there);
#   2. train the tiny config a few hundred steps on the GPU (the CPU without one)
#      under the averis recipe: a checkpoint directory with tokenizer.json;
#   3. scripts/hf_check.py: AutoTokenizer + AutoModelForCausalLM load the
#      directory alone; the tokenizer's ids; greedy generate (float32, CPU and
#      GPU) == `averis sample --temperature 0 --recipe fp32` token for token;
#   4. `averis eval --task tasks/default_cont.jsonl` on the CPU and the GPU,
#      under fp32 (every item) and under the training recipe (the first
#      AVERIS_ITEMS, 500), CPU and GPU compared;
#   5. with lm-eval wheels in .wheels/lm_eval (scripts/get_lm_eval_wheels.sh,
#      carried): pip install --no-index, then `lm_eval --model hf` on the same
#      checkpoint and task; its acc and acc_norm must equal ours (fp32, CPU)
#      within 0.1 points.
# Needs: data/default (scripts/get_data.sh, carried), torch + transformers
# (the device image). Writes logs and a summary to $OUT (or out/device_hf).
# Exit status: the number of failed steps. Expected time on an H100/H200:
# about 3 minutes (build ~1 min, training ~20 s, checks ~1.5 min).
# Knobs: HF_STEPS (300), TASK (tasks/default_cont.jsonl), TASK_LIMIT (all items),
# AVERIS_ITEMS (500), EVAL_TIMEOUT_S (120: each `averis eval --task` call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_hf}
RUNS=${RUNS:-/tmp/averis_device_hf}
STEPS=${HF_STEPS:-300}
TASK=${TASK:-tasks/default_cont.jsonl}
YAML=${TASK%.jsonl}.yaml
LIMIT=()
[[ -n ${TASK_LIMIT:-} ]] && LIMIT=(--limit "$TASK_LIMIT")
AVERIS_ITEMS=${AVERIS_ITEMS:-500}
mkdir -p "$OUT" "$RUNS"
JOBS=$(nproc 2>/dev/null || echo 4)
fail=0
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
note_fail() { echo "FAILED: $*" | tee -a "$OUT/summary.txt"; fail=$((fail + 1)); }
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
say "device_hf $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
    GPU=1
    say "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
fi
say "python: $(python3 -c 'import sys, torch, transformers, tokenizers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__)' 2>&1 | tail -1)"

step "build"
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" all >"$RUNS/build.log" 2>&1; then
    tail -30 "$RUNS/build.log"; note_fail "build"; exit 1
fi
BIN=$(make -s print-build)/averis
[[ -s data/default/train_000000.bin ]] || { note_fail "data/default is missing (carry it: scripts/get_data.sh)"; exit 1; }
[[ -s data/default/tokenizer.json ]] || $BIN tokenize data/default --hf data/default  # prepared before tokenizer.json

step "train tiny ($STEPS steps, averis recipe, $([[ $GPU == 1 ]] && echo cuda || echo cpu))"
rm -rf "$RUNS/tiny"
DEV=(); [[ $GPU == 1 ]] && DEV=(--device cuda)
if ! $BIN train --config tiny --data data/default --recipe averis --steps "$STEPS" --batch 16 --seq 256 --lr 3e-3 \
        --warmup 30 --val-every "$STEPS" --val-batches 8 --seed 1 --out "$RUNS/tiny" "${DEV[@]}" >"$RUNS/train.log" 2>&1; then
    tail -5 "$RUNS/train.log"; note_fail "train"; exit 1
fi
say "train: $(grep '^final:' "$RUNS/train.log")"
CK=$RUNS/tiny/$(cat "$RUNS/tiny/latest")
ls "$CK" | tee "$OUT/checkpoint_files.txt"

step "transformers: load the directory alone, tokenizer, greedy generate vs averis sample"
for dev in cpu $([[ $GPU == 1 ]] && echo cuda); do
    if python3 scripts/hf_check.py "$CK" "$BIN" --device $dev --tokens 48 >"$OUT/hf_check_$dev.txt" 2>"$RUNS/hf_check_$dev.err"; then
        say "hf_check ($dev): $(tail -1 "$OUT/hf_check_$dev.txt")"
    else
        cat "$OUT/hf_check_$dev.txt"; tail -5 "$RUNS/hf_check_$dev.err"
        note_fail "hf_check ($dev): $(tail -1 "$OUT/hf_check_$dev.txt")"
    fi
done

step "averis eval --task $TASK: CPU and GPU, fp32 and the training recipe"
: > "$OUT/eval_task.txt"
for dev in cpu $([[ $GPU == 1 ]] && echo cuda); do
    for rec in fp32 averis; do
        s=$(date +%s.%N)
        lim=("${LIMIT[@]}") # the training recipe on the first AVERIS_ITEMS items (its CPU forward is the slow one)
        [[ $rec == averis && ${#lim[@]} -eq 0 ]] && lim=(--limit "$AVERIS_ITEMS")
        # a time-out of its own (EVAL_TIMEOUT_S, 120 s): a stuck evaluation leaves the later steps their time
        if timeout "${EVAL_TIMEOUT_S:-120}" $BIN eval "$CK" --task "$TASK" --device $dev --recipe $rec --batch 32 "${lim[@]}" \
                --json "$RUNS/task_${dev}_$rec.json" --scores "$RUNS/scores_${dev}_$rec.jsonl" >>"$OUT/eval_task.txt" 2>"$RUNS/eval_${dev}_$rec.err"; then
            say "eval --task $dev $rec: $(tail -1 "$OUT/eval_task.txt" | sed 's/.*jsonl //') [$(python3 -c "import time; print(f'{time.time() - $s:.1f}')") s]"
            [[ $dev == cuda ]] && say "  $(grep -h "GPU model" "$RUNS/eval_${dev}_$rec.err" | tail -1)"
        else
            tail -3 "$RUNS/eval_${dev}_$rec.err"; note_fail "eval --task $dev $rec"
        fi
    done
done
if [[ $GPU == 1 ]]; then # CPU vs GPU: log-likelihoods close, accuracies within a few items
    python3 - "$RUNS" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys
R = sys.argv[1]
bad = 0
for rec in ("fp32", "averis"):
    a = [json.loads(l) for l in open(f"{R}/scores_cpu_{rec}.jsonl")]
    b = [json.loads(l) for l in open(f"{R}/scores_cuda_{rec}.jsonl")]
    d = max(abs(x - y) / max(1.0, abs(x)) for p, q in zip(a, b) for x, y in zip(p["loglik"], q["loglik"]))
    ja, jb = json.load(open(f"{R}/task_cpu_{rec}.json")), json.load(open(f"{R}/task_cuda_{rec}.json"))
    dacc = max(abs(ja[m] - jb[m]) for m in ("acc", "acc_norm"))
    tol = 0.01 if rec == "fp32" else 0.02
    ok = dacc <= tol
    bad += not ok
    print(f"cpu vs cuda ({rec}): max rel loglik diff {d:.2e}, max |acc diff| {100 * dacc:.2f} points (bound {100 * tol:.0f}) {'ok' if ok else 'FAILED'}")
sys.exit(bad)
PY
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "eval --task cpu vs cuda"
fi

step "lm-evaluation-harness"
if ! compgen -G ".wheels/lm_eval/lm_eval-*.whl" >/dev/null; then
    say "lm-eval: SKIPPED, no wheels in .wheels/lm_eval (run scripts/get_lm_eval_wheels.sh and carry .wheels/lm_eval)"
else
    if ! python3 -m pip install -q --no-index --find-links .wheels/lm_eval "lm-eval==0.4.13" >"$RUNS/pip.log" 2>&1; then
        tail -5 "$RUNS/pip.log"; note_fail "pip install lm-eval from .wheels/lm_eval: $(grep -m1 ERROR "$RUNS/pip.log")"
    else
        say "lm-eval: $(python3 -m pip show lm-eval 2>/dev/null | grep ^Version), datasets $(python3 -c 'import datasets; print(datasets.__version__)' 2>/dev/null)"
        name=$(sed -n 's/^task: //p' "$YAML")
        LMLIM=(); [[ -n ${TASK_LIMIT:-} ]] && LMLIM=(--limit "$TASK_LIMIT")
        s=$(date +%s)
        if HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf \
                --model_args "pretrained=$CK,dtype=float32" --tasks "$name" --include_path "$(dirname "$YAML")" \
                --device "$([[ $GPU == 1 ]] && echo cuda:0 || echo cpu)" --batch_size 64 "${LMLIM[@]}" \
                --output_path "$RUNS/lm_eval" --log_samples >"$OUT/lm_eval.txt" 2>"$RUNS/lm_eval.err"; then
            say "lm_eval: done in $(( $(date +%s) - s )) s"
            grep -E "^\|" "$OUT/lm_eval.txt" | tee -a "$OUT/summary.txt"
            python3 - "$RUNS" "$name" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import glob, json, sys
R, name = sys.argv[1:]
res = json.load(open(sorted(glob.glob(f"{R}/lm_eval/*/results_*.json"))[-1]))["results"][name]
ours = json.load(open(f"{R}/task_cpu_fp32.json"))
bad = 0
for m in ("acc", "acc_norm"):
    theirs = res[f"{m},none"]
    d = abs(theirs - ours[m]) * 100
    ok = d <= 0.1
    bad += not ok
    print(f"lm_eval vs averis eval --task (fp32, cpu): {m} {theirs:.4f} ± {res[f'{m}_stderr,none']:.4f} vs "
          f"{ours[m]:.4f} ± {ours[m + '_stderr']:.4f}: |diff| {d:.3f} points (bound 0.1) {'ok' if ok else 'FAILED'}")
samples = sorted(glob.glob(f"{R}/lm_eval/*/samples_{name}_*.jsonl"))[-1]
mine = [json.loads(l) for l in open(f"{R}/scores_cpu_fp32.jsonl")]
dmax = max(abs(float(r[0][0]) - y) for s in map(json.loads, open(samples))
           for r, y in zip(s["resps"], mine[s["doc_id"]]["loglik"]))
print(f"lm_eval vs averis: max |loglik diff| over every request {dmax:.2e}")
sys.exit(bad)
PY
            [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "lm_eval vs averis eval --task"
        else
            tail -20 "$RUNS/lm_eval.err"; note_fail "lm_eval run"
        fi
    fi
fi
cp "$RUNS/train.log" "$OUT/train.log" 2>/dev/null
say "total $(( $(date +%s) - t0 )) s, $fail failed"
exit $fail
