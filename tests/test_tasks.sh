#!/usr/bin/env bash
# test_tasks.sh BIN — `averis eval --task` on the CPU (docs/huggingface.md):
# a tiny model's log-likelihoods checked by hand against its own logits on the
# same tokens (`averis eval --dump`), acc/acc_norm/stderr recomputed from the
# per-item scores, batching and lm-eval's whitespace rule, the Hugging Face
# files in the checkpoint, and malformed task lines as one-line errors naming
# the line. Ends with "N passed, N failed".
set -u
BIN=${1:-build/averis}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "  FAIL $*" >&2; }
expect_err() { # NAME PATTERN CMD...: non-zero exit, one stderr line matching PATTERN
    local name=$1 pat=$2; shift 2
    if "$@" >/dev/null 2>"$T/stderr"; then bad "$name: exit 0"
    elif [[ $(grep -vc '^  ' "$T/stderr") -ne 1 ]] || ! grep -q -- "$pat" "$T/stderr"; then bad "$name: $(cat "$T/stderr")"
    else ok; fi
}

# a tiny model on README text
for i in 1 2 3 4; do cat README.md; done > "$T/doc.txt"
"$BIN" prepare --out "$T/d" --vocab 400 "$T/doc.txt" >/dev/null 2>&1 || bad "prepare"
cat > "$T/cfg.json" <<'JSON'
{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}
JSON
"$BIN" train --config "$T/cfg.json" --data "$T/d" --batch 2 --seq 32 --val-batches 1 --quiet --recipe averis \
    --steps 4 --out "$T/run" >"$T/train.out" 2>&1 || bad "train: $(cat "$T/train.out")"
CK=$T/run/ckpt_00000004

# the checkpoint holds the Hugging Face files; prepare's output too
python3 - "$CK" "$T/d" <<'PY' && ok || bad "Hugging Face files in the checkpoint / prepare output"
import json, sys
for d in sys.argv[1:]:
    tj = json.load(open(f"{d}/tokenizer.json", encoding="utf-8"))
    tc = json.load(open(f"{d}/tokenizer_config.json"))
    gc = json.load(open(f"{d}/generation_config.json"))
    assert tj["model"]["type"] == "BPE" and tj["model"]["vocab"]["<|endoftext|>"] == 256, d
    assert len(tj["model"]["merges"]) == len(tj["model"]["vocab"]) - 257, d
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and tc["split_special_tokens"] is True, d
    assert tc["eos_token"] == tc["bos_token"] == "<|endoftext|>", d
    assert gc["bos_token_id"] == gc["eos_token_id"] == 256, d
assert json.load(open(f"{sys.argv[1]}/tokenizer_config.json"))["model_max_length"] == 64
PY

# a task: README phrases, four choices each; item 3 = item 2 with the context's trailing spaces moved
cat > "$T/task.jsonl" <<'JSON'
{"context": "FP4 training for large language models, in C and", "choices": [" CUDA.", " Python.", " Rust and Go.", " nothing"], "label": 0}
{"context": "make test               # the test", "choices": [" suite", " benchmark", " demo"], "label": 0}

{"context": "The demo trains the   ", "choices": ["tiny Qwen3", "small model", "fox"], "label": 1}
{"context": "The demo trains the", "choices": ["   tiny Qwen3", "   small model", "   fox"], "label": 2}
{"context": "日本語 😀 context", "choices": [" é", " \u00e9\u00e9", " 🎉"], "label": 2}
JSON
for b in 1 16; do
    "$BIN" eval "$CK" --task "$T/task.jsonl" --recipe fp32 --batch $b --scores "$T/s$b.jsonl" --json "$T/r$b.json" \
        >"$T/e$b.out" 2>&1 && grep -q 'acc [0-9.]* ± [0-9.]*  acc_norm' "$T/e$b.out" && ok || bad "eval --task --batch $b: $(cat "$T/e$b.out")"
done
# the first request by hand: its tokens as a shard, their logits from `averis eval --dump`,
# the choice's log-likelihood summed from log-softmax
python3 - "$T" "$BIN" "$CK" <<'PY' && ok || bad "log-likelihood by hand from the model's logits"
import json, math, os, struct, subprocess, sys
T, BIN, CK = sys.argv[1:]
s = json.loads(open(f"{T}/s1.jsonl").readline())
worst = 0.0
for k in range(len(s["tokens"])):
    toks, nc = s["tokens"][k], s["ncont"][k]
    d = f"{T}/one{k}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/val_000000.bin", "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, len(toks), *[0] * 253) + struct.pack(f"<{len(toks)}H", *toks))
    subprocess.run([BIN, "eval", CK, "--data", d, "--batch", "1", "--seq", str(len(toks) - 1), "--batches", "1",
                    "--recipe", "fp32", "--dump", f"{d}/x"], check=True, capture_output=True)
    raw = open(f"{d}/x.logits.npy", "rb").read()
    hl = struct.unpack("<H", raw[8:10])[0]
    V = 512
    z = struct.unpack(f"<{(len(raw) - 10 - hl) // 4}f", raw[10 + hl:])
    ll = 0.0
    for t in range(len(toks) - 1 - nc, len(toks) - 1):
        row = z[t * V:(t + 1) * V]
        m = max(row)
        ll += row[toks[t + 1]] - m - math.log(sum(math.exp(v - m) for v in row))
    worst = max(worst, abs(ll - s["loglik"][k]))
assert worst < 2e-4, worst
print(f"  by hand: |loglik - eval --task| <= {worst:.2e}")
PY
# acc, acc_norm (per character), stderr from the per-item scores; batch 1 = batch 16; the whitespace rule
python3 - "$T" <<'PY' && ok || bad "acc / acc_norm / stderr / batching / whitespace rule"
import json, math, sys
T = sys.argv[1]
items = [json.loads(l) for l in open(f"{T}/task.jsonl") if l.strip()]
s1 = [json.loads(l) for l in open(f"{T}/s1.jsonl")]
s16 = [json.loads(l) for l in open(f"{T}/s16.jsonl")]
r = json.load(open(f"{T}/r1.json"))
assert r == {**json.load(open(f"{T}/r16.json")), "task": r["task"]}, "batch 1 and 16 disagree"
argmax = lambda xs: max(range(len(xs)), key=lambda i: (xs[i], -i))
acc, accn = [], []
for it, a, b in zip(items, s1, s16):
    assert all(abs(x - y) < 1e-5 for x, y in zip(a["loglik"], b["loglik"])), "batching changed a log-likelihood"
    acc.append(float(argmax(a["loglik"]) == it["label"]))
    accn.append(float(argmax([l / len(c) for l, c in zip(a["loglik"], it["choices"])]) == it["label"]))
n = len(acc)
for name, xs in (("acc", acc), ("acc_norm", accn)):
    mu = sum(xs) / n
    se = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)
    assert abs(r[name] - mu) < 1e-6 and abs(r[name + "_stderr"] - se) < 1e-6, (name, r, mu, se)
assert r["items"] == 5 and r["recipe"] == "fp32" and r["device"] == "cpu"
# "The demo trains the   " + "tiny" is scored as "The demo trains the" + "   tiny" (lm-eval's _encode_pair)
assert s1[2]["tokens"] == s1[3]["tokens"] and s1[2]["loglik"] == s1[3]["loglik"], "trailing whitespace not moved"
assert s1[0]["tokens"][0][0] == 256, "<|endoftext|> first"
PY
# --limit, and the training recipe by default
"$BIN" eval "$CK" --task "$T/task.jsonl" --limit 2 >"$T/lim.out" 2>&1 && grep -q '(2 items, recipe averis, cpu)' "$T/lim.out" \
    && ok || bad "eval --task --limit: $(cat "$T/lim.out")"

# malformed lines: one line each, naming the file and line
printf '{"context": "a", "choices": ["b"], "label": 0}\n\n{"context": "a", "choices": ["b"], "label": 0\n' > "$T/m1.jsonl"
expect_err "bad JSON" "m1.jsonl line 3" "$BIN" eval "$CK" --task "$T/m1.jsonl"
printf '{"context": "a", "label": 0}\n' > "$T/m2.jsonl"
expect_err "no choices" 'm2.jsonl line 1: "choices" is missing' "$BIN" eval "$CK" --task "$T/m2.jsonl"
printf '{"context": "a", "choices": ["b", "c"], "label": 2}\n' > "$T/m3.jsonl"
expect_err "label out of range" 'line 1: "label" is missing or not an integer in 0..1' "$BIN" eval "$CK" --task "$T/m3.jsonl"
printf '{"context": "a", "choices": ["b"], "label": 0}\n{"context": "", "choices": ["b"], "label": 0}\n' > "$T/m4.jsonl"
expect_err "empty context" 'm4.jsonl line 2: "context" is empty' "$BIN" eval "$CK" --task "$T/m4.jsonl"
printf '{"context": "a", "choices": ["b", 3], "label": 0}\n' > "$T/m5.jsonl"
expect_err "choice not a string" "line 1: choice 1 is not a non-empty string" "$BIN" eval "$CK" --task "$T/m5.jsonl"
printf '["context"]\n' > "$T/m6.jsonl"
expect_err "not an object" "line 1: not a JSON object" "$BIN" eval "$CK" --task "$T/m6.jsonl"
printf '\n\n' > "$T/m7.jsonl"
expect_err "no items" "no items" "$BIN" eval "$CK" --task "$T/m7.jsonl"
expect_err "missing task file" "nowhere.jsonl" "$BIN" eval "$CK" --task "$T/nowhere.jsonl"
expect_err "bad device" "--device 'tpu' is not cpu or cuda" "$BIN" eval "$CK" --task "$T/task.jsonl" --device tpu
expect_err "--scores without --task" "go with --task" "$BIN" eval "$CK" --scores "$T/x"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    expect_err "cuda without a GPU" "no usable GPU\|built without CUDA" "$BIN" eval "$CK" --task "$T/task.jsonl" --device cuda
fi
# averis tokenize: ids and back, --hf writes the three files
printf 'Hello  world\n\xff\xfe' > "$T/tok.in"
"$BIN" tokenize "$T/d" "$T/tok.in" > "$T/tok.ids" && "$BIN" tokenize --decode "$T/d" "$T/tok.ids" > "$T/tok.out" \
    && cmp -s "$T/tok.in" "$T/tok.out" && "$BIN" tokenize --bos "$T/d" "$T/tok.in" | grep -q '^256 ' \
    && "$BIN" tokenize "$T/d/tokenizer.bpe" --hf "$T/hf" && [[ -s $T/hf/tokenizer.json && -s $T/hf/generation_config.json ]] \
    && ok || bad "averis tokenize"
echo "12 99999" > "$T/bad.ids"
expect_err "tokenize --decode bad id" "line 1: '99999' is not an id below" "$BIN" tokenize --decode "$T/d" "$T/bad.ids"
"$BIN" tokenize --help | grep -q "usage: averis tokenize" && ok || bad "tokenize --help"
# two ids with the same bytes (258 = ab+c, 260 = a+bc): tokenizer.json cannot hold both; --hf says
# which, prepare warns and still prepares
printf 'averis-bpe 1\nvocab_size 261\nmerges 4\n97 98\n257 99\n98 99\n97 259\n' > "$T/dup.bpe"
expect_err "tokenize --hf duplicate bytes" "ids 258 and 260 have the same bytes" "$BIN" tokenize "$T/dup.bpe" --hf "$T/hfdup"
"$BIN" prepare --out "$T/pdup" --tokenizer "$T/dup.bpe" "$T/doc.txt" >/dev/null 2>"$T/pdup.err" \
    && grep -q "warning: no Hugging Face tokenizer files: bpe: ids 258 and 260" "$T/pdup.err" \
    && [[ -s $T/pdup/train_000000.bin && ! -e $T/pdup/tokenizer.json ]] && ok || bad "prepare with duplicate bytes: $(cat "$T/pdup.err")"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
