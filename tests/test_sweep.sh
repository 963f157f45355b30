#!/usr/bin/env bash
# test_sweep.sh BIN — the corpus builder and the recipe sweep at toy scale on
# the CPU (a few seconds): scripts/build_corpus.sh on this machine's Python
# (shards identical for 1 and 3 encoding threads), then scripts/sweep.py with
# 2 recipes × 2 seeds of a micro model: every run finishes, one CSV row each
# with a final validation loss; the pairing holds, checked here from the runs'
# own output (the init hash is equal across the recipes of a seed and differs
# between seeds; every run read the same tokens); a sweep stopped half way
# (--stop-after) and called again resumes and ends with the numbers of an
# uninterrupted one; every finished run is scored on a downstream task (the
# shipped tasks/default_cont.jsonl, or one built from the corpus by
# make_tasks.py when --task is not given; --task-limit keeps it seconds) and
# sweep.csv's acc, acc_norm and their stderr are in [0, 1]; the fidelity
# report shows acc_norm ± stderr and the paired difference to bf16. Ends with
# "N passed, N failed".
set -u
BIN=${1:-build/averis}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "  FAIL $*" >&2; }

# --- corpus ------------------------------------------------------------------
for th in 1 3; do
    AVERIS_BIN=$BIN VOCAB=400 VAL_DOCS=0.1 BPE_SAMPLE_MB=0.3 THREADS=$th \
        bash scripts/build_corpus.sh "$T/c$th" 0.6 >"$T/corpus$th.log" 2>&1 \
        || bad "build_corpus.sh ($th threads): $(tail -3 "$T/corpus$th.log")"
done
[[ -s $T/c1/train_000000.bin && -s $T/c1/val_000000.bin && -s $T/c1/tokenizer.bpe ]] && ok || bad "corpus files missing"
cmp -s "$T/c1/train_000000.bin" "$T/c3/train_000000.bin" && cmp -s "$T/c1/val_000000.bin" "$T/c3/val_000000.bin" \
    && ok || bad "corpus shards differ between 1 and 3 encoding threads"
grep -q "held out for validation" "$T/c1/prepare.log" && grep -qE "encode: .* MB/s" "$T/c1/prepare.log" \
    && ok || bad "prepare.log lacks the split or the throughput: $(cat "$T/c1/prepare.log")"
AVERIS_BIN=$BIN VOCAB=400 VAL_DOCS=0.1 BPE_SAMPLE_MB=0.3 bash scripts/build_corpus.sh "$T/c1" 0.6 | grep -q "is ready" \
    && ok || bad "build_corpus.sh did not keep a finished corpus"
# ORDER=sorted: the same documents as the default hash order, in the walk's order
AVERIS_BIN=$BIN VOCAB=400 VAL_DOCS=0.1 BPE_SAMPLE_MB=0.3 ORDER=sorted bash scripts/build_corpus.sh "$T/cs" 0.6 >"$T/corpus_s.log" 2>&1 \
    || bad "build_corpus.sh ORDER=sorted: $(tail -3 "$T/corpus_s.log")"
if cmp -s <(sort "$T/c1/files.txt") <(sort "$T/cs/files.txt") && ! cmp -s "$T/c1/files.txt" "$T/cs/files.txt"; then ok
else bad "ORDER=hash and ORDER=sorted should list the same files in different orders"; fi
ORDER=bogus bash scripts/build_corpus.sh "$T/cb" 0.6 2>&1 | grep -q "ORDER must be" && ok || bad "a bad ORDER is not named"

# --- sweep -------------------------------------------------------------------
# its data: a few of those files with a small validation tail (the sweep validates on all of it)
head -12 "$T/c1/files.txt" > "$T/few.txt"
"$BIN" prepare --out "$T/d" --files-from "$T/few.txt" --vocab 400 --val-frac 0.02 >"$T/d.log" 2>&1 \
    || bad "prepare for the sweep: $(tail -3 "$T/d.log")"
cat > "$T/micro.json" <<'JSON'
{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 256,
 "tie_word_embeddings": true}
JSON
SW=(python3 scripts/sweep.py --bin "$BIN" --data "$T/d" --recipes bf16,nvfp4 --seeds 1,2 --concurrent 2 --threads 1
    --tail 4 --report-s 1000 --task-limit 12)
TA=(--config "$T/micro.json" --steps 12 --batch 2 --seq 16 --lr 3e-3 --val-every 12 --log-every 12)
"${SW[@]}" --out "$T/s" --task tasks/default_cont.jsonl -- "${TA[@]}" >"$T/s.log" 2>&1 \
    || bad "sweep exited $?: $(tail -5 "$T/s.log")"
n=$(grep -c ',done,12,12,' "$T/s/sweep.csv" 2>/dev/null)
[[ $n -eq 4 ]] && ok || bad "sweep.csv: $n of 4 runs done: $(cat "$T/s/sweep.csv" 2>/dev/null)"
python3 - "$T/s/sweep.csv" <<'PY' && ok || bad "sweep.csv columns"
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 4, rows
for r in rows:
    v, t = float(r["final_val_loss"]), float(r["train_loss_tail"])
    assert 0 < v < 20 and 0 < t < 20 and int(r["tail_steps"]) == 4 and int(r["tokens"]) == 12 * 32, r
    assert int(r["val_batches"]) == (int(r["val_tokens"]) - 1) // 32, r  # the whole validation split
PY
python3 - "$T/s/sweep.csv" <<'PY' && ok || bad "sweep.csv downstream columns: $(cat "$T/s/sweep.csv")"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:
    assert r["task"] == "tasks/default_cont.jsonl" and int(r["task_items"]) == 12, r
    for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert 0.0 <= float(r[k]) <= 1.0, (k, r)
    assert float(r["acc_norm_stderr"]) > 0 or float(r["acc_norm"]) in (0.0, 1.0), r
PY
grep -q -- "eval $T/s/runs/nvfp4_s2 --task tasks/default_cont.jsonl --device cpu --recipe nvfp4 " \
    "$T/s/runs/nvfp4_s2/downstream.out" && ok || bad "downstream eval command: $(head -2 "$T/s/runs/nvfp4_s2/downstream.out")"
python3 experiments/fidelity/report.py "$T/s" >"$T/rep.log" 2>&1 || bad "report.py: $(tail -3 "$T/rep.log")"
python3 - "$T/s/report/report.md" "$T/s/sweep.csv" <<'PY' && ok || bad "report lacks the downstream table: $(grep -A6 Downstream "$T/s/report/report.md")"
import csv, sys
md = open(sys.argv[1]).read()
rows = {(r["recipe"], r["seed"]): r for r in csv.DictReader(open(sys.argv[2]))}
assert "## Downstream: zero-shot acc_norm" in md, md
line = next(l for l in md.splitlines() if l.startswith("| nvfp4 |") and "±" in l)
cells = [c.strip() for c in line.strip("|").split("|")]
n1, b1 = rows[("nvfp4", "1")], rows[("bf16", "1")]
assert cells[1] == f"{float(n1['acc_norm']):.4f} ± {float(n1['acc_norm_stderr']):.4f}", (cells, n1)
assert cells[5] == f"{float(n1['acc_norm']) - float(b1['acc_norm']):+.4f}", (cells, n1, b1)  # Δ seed 1 vs bf16
assert cells[-1] not in ("", "–") and cells[-2] in ("tie", "better", "worse"), cells  # loss gap, verdict
PY
grep -q "^pairing: ok" "$T/s/pairing.txt" && ok || bad "pairing: $(cat "$T/s/pairing.txt")"
ih() { grep -o 'init hash [0-9a-f]*' "$T/s/runs/$1/train.out" | head -1; }
dh() { grep -o 'data hash [0-9a-f]*' "$T/s/runs/$1/train.out" | tail -1; }
[[ -n "$(ih bf16_s1)" && "$(ih bf16_s1)" == "$(ih nvfp4_s1)" && "$(ih bf16_s2)" == "$(ih nvfp4_s2)" ]] \
    && ok || bad "same seed, different init: $(ih bf16_s1) / $(ih nvfp4_s1), $(ih bf16_s2) / $(ih nvfp4_s2)"
[[ "$(ih bf16_s1)" != "$(ih bf16_s2)" ]] && ok || bad "seeds 1 and 2 start from the same weights"
[[ -n "$(dh bf16_s1)" && "$(dh bf16_s1)" == "$(dh nvfp4_s1)" && "$(dh bf16_s1)" == "$(dh nvfp4_s2)" \
   && "$(dh bf16_s1)" == "$(dh bf16_s2)" ]] && ok || bad "the runs read different tokens"
grep -q -- '--recipe nvfp4,seed=2 ' "$T/s/runs/nvfp4_s2/train.out" && ok || bad "FP4 recipe without its seed"
# stopped half way, then called again: resumes, and ends where the uninterrupted sweep did
"${SW[@]}" --out "$T/r" --task-kind code -- "${TA[@]}" --stop-after 6 >"$T/r1.log" 2>&1 || bad "sweep (first half) exited $?"
[[ $(grep -c ',partial,6,12,' "$T/r/sweep.csv") -eq 4 ]] && ok || bad "first half: $(cat "$T/r/sweep.csv")"
"${SW[@]}" --out "$T/r" --task-kind code -- "${TA[@]}" >"$T/r2.log" 2>&1 || bad "sweep (second half) exited $?"
[[ $(grep -c "resuming from" "$T/r/runs/nvfp4_s2/train.out") -eq 1 ]] && ok || bad "the run did not resume"
# no --task and not data/default: the task is built once from the corpus's held-out split (code: Python files)
[[ -s $T/r/task.jsonl ]] && python3 - "$T/r/sweep.csv" "$T/r/task.jsonl" <<'PY' && ok || bad "task built from the corpus: $(tail -3 "$T/r2.log")"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 4 and all(r["task"] == sys.argv[2] and 0 <= float(r["acc_norm"]) <= 1 for r in rows), rows
PY
cut -d, -f1-11 "$T/s/sweep.csv" > "$T/a.csv"; cut -d, -f1-11 "$T/r/sweep.csv" > "$T/b.csv"
cmp -s "$T/a.csv" "$T/b.csv" && ok || bad "resumed sweep differs: $(diff "$T/a.csv" "$T/b.csv")"
"${SW[@]}" --out "$T/r" --task-kind code -- "${TA[@]}" >"$T/r3.log" 2>&1 && grep -q "4/4 runs done" "$T/r3.log" \
    && ! grep -q "start\|resume " "$T/r3.log" && ok || bad "a finished sweep started runs again: $(cat "$T/r3.log")"
python3 scripts/sweep.py --bin "$BIN" --data "$T/c1" --out "$T/x" -- --seed 3 >"$T/x.log" 2>&1
[[ $? -eq 2 ]] && grep -q "set by the sweep" "$T/x.log" && ok || bad "--seed among the train options: $(cat "$T/x.log")"

# a Qwen3-MoE config through the same harness (issue 18 item 5): paired, every run done
cat > "$T/moe.json" <<'JSON'
{"model_type": "qwen3_moe", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 256,
 "tie_word_embeddings": true, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
 "norm_topk_prob": true, "router_aux_loss_coef": 0.01}
JSON
python3 scripts/sweep.py --bin "$BIN" --data "$T/d" --recipes bf16,averis --seeds 1,2 --concurrent 2 --threads 1 \
    --tail 2 --report-s 1000 --no-task --out "$T/m" -- --config "$T/moe.json" --steps 4 --batch 2 --seq 16 --lr 3e-3 \
    --val-every 4 --log-every 4 >"$T/m.log" 2>&1 || bad "MoE sweep exited $?: $(tail -5 "$T/m.log")"
[[ $(grep -c ',done,4,4,' "$T/m/sweep.csv" 2>/dev/null) -eq 4 ]] && grep -q "^pairing: ok" "$T/m/pairing.txt" \
    && ok || bad "MoE sweep: $(cat "$T/m/sweep.csv" "$T/m/pairing.txt" 2>&1 | head -8)"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
