#!/usr/bin/env bash
# test_cli.sh — `averis quant` end to end: every PyTorch fixture through the
# binary (packed bytes and output compared), and bad input → one-line error,
# non-zero exit, no output file. Ends with "N passed, N failed".
set -u
BIN=${1:-build/averis}
FX=${AVERIS_FIXTURES:-tests/fixtures/nvfp4}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "  FAIL $*" >&2; }

# --- fixtures through the CLI -------------------------------------------------
nfx=0
while read -r case variant flags; do
    [[ -z "$case" || "$case" == \#* ]] && continue
    for impl in ref auto; do
        extra=(); [[ $impl == ref ]] && extra=(--ref)
        # shellcheck disable=SC2086
        if ! "$BIN" quant "$FX/$case.in.npy" --out "$T/o.npy" --packed "$T/o.packed" $flags "${extra[@]}" >"$T/log" 2>&1; then
            bad "fixture $case $variant ($impl): exit $? $(cat "$T/log")"; continue
        fi
        if ! cmp -s "$T/o.packed" "$FX/$case.$variant.packed"; then bad "fixture $case $variant ($impl): packed differs"; continue; fi
        n=$(( $(stat -c %s "$FX/$case.$variant.deq.npy") - 128 ))
        if ! cmp -s <(tail -c "$n" "$T/o.npy") <(tail -c "$n" "$FX/$case.$variant.deq.npy"); then
            bad "fixture $case $variant ($impl): output differs"; continue
        fi
        grep -q '^rel_mse' "$T/log" && grep -q '^flushed' "$T/log" && grep -q '^saturated' "$T/log" \
            || { bad "fixture $case $variant: statistics missing"; continue; }
        ok
    done
    nfx=$((nfx + 1))
done < "$FX/MANIFEST"
[[ $nfx -ge 64 ]] && ok || bad "only $nfx fixtures in the manifest"

# --- bad input ----------------------------------------------------------------
mk() { # mk FILE HEADER_DICT DATA_BYTES
    python3 - "$1" "$2" "$3" <<'PY'
import struct, sys
path, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = d.encode() + b" " * ((64 - (10 + len(d) + 1) % 64) % 64) + b"\n"
open(path, "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + b"\x00" * n)
PY
}
printf 'hello world\n' > "$T/text.npy"
head -c 300 "$FX/normal.in.npy" > "$T/trunc.npy"
mk "$T/int.npy"   "{'descr': '<i4', 'fortran_order': False, 'shape': (4, 16), }" 256
mk "$T/big.npy"   "{'descr': '>f4', 'fortran_order': False, 'shape': (4, 16), }" 256
mk "$T/fort.npy"  "{'descr': '<f4', 'fortran_order': True, 'shape': (4, 16), }" 256
mk "$T/three.npy" "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 16), }" 256
mk "$T/one.npy"   "{'descr': '<f4', 'fortran_order': False, 'shape': (16,), }" 64
mk "$T/empty.npy" "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 16), }" 0
mk "$T/extra.npy" "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 16), }" 65
mkdir -p "$T/ro"
expect_error() { # expect_error NAME PATTERN ARGS...
    local name=$1 pat=$2; shift 2
    rm -f "$T/out.npy"
    "$BIN" quant "$@" >"$T/stdout" 2>"$T/stderr"; local rc=$?
    local lines; lines=$(wc -l < "$T/stderr")
    if [[ $rc -eq 0 ]]; then bad "$name: exit 0"; return; fi
    if [[ $rc -ge 128 ]]; then bad "$name: crashed (exit $rc)"; return; fi
    if [[ $lines -ne 1 ]]; then bad "$name: want a one-line error, got $lines lines: $(cat "$T/stderr")"; return; fi
    if ! grep -qi -- "$pat" "$T/stderr"; then bad "$name: error '$(cat "$T/stderr")' does not mention '$pat'"; return; fi
    if [[ -e "$T/out.npy" ]] || ls "$T"/out.npy.tmp.* >/dev/null 2>&1; then bad "$name: left an output file"; return; fi
    ok
}
expect_error "not npy"       "not a .npy"      "$T/text.npy"  --out "$T/out.npy"
expect_error "truncated"     "truncated"       "$T/trunc.npy" --out "$T/out.npy"
expect_error "wrong dtype"   "<i4"             "$T/int.npy"   --out "$T/out.npy"
expect_error "big endian"    ">f4"             "$T/big.npy"   --out "$T/out.npy"
expect_error "fortran"       "fortran"         "$T/fort.npy"  --out "$T/out.npy"
expect_error "3-D"           "2-D"             "$T/three.npy" --out "$T/out.npy"
expect_error "1-D"           "2-D"             "$T/one.npy"   --out "$T/out.npy"
expect_error "empty"         "empty"           "$T/empty.npy" --out "$T/out.npy"
expect_error "trailing"      "trailing"        "$T/extra.npy" --out "$T/out.npy"
expect_error "missing file"  "cannot open"     "$T/nope.npy"  --out "$T/out.npy"
expect_error "no --out"      "--out"           "$FX/normal.in.npy"
expect_error "bad block"     "--block"         "$FX/normal.in.npy" --out "$T/out.npy" --block 8x8
expect_error "bad seed"      "--seed"          "$FX/normal.in.npy" --out "$T/out.npy" --sr --seed x1
expect_error "mean-fp4 alone" "--split"        "$FX/normal.in.npy" --out "$T/out.npy" --mean-fp4
expect_error "unknown opt"   "unknown option"  "$FX/normal.in.npy" --out "$T/out.npy" --frobnicate
# unwritable output: a missing directory, and a directory in the way
if "$BIN" quant "$FX/normal.in.npy" --out "$T/nodir/out.npy" >/dev/null 2>"$T/stderr"; then bad "unwritable: exit 0"
elif [[ $(wc -l < "$T/stderr") -ne 1 ]] || ! grep -q "nodir/out.npy" "$T/stderr"; then bad "unwritable: $(cat "$T/stderr")"
elif ls "$T"/nodir >/dev/null 2>&1; then bad "unwritable: created something"; else ok; fi
if "$BIN" quant "$FX/normal.in.npy" --out "$T/ro" >/dev/null 2>"$T/stderr"; then bad "dir as output: exit 0"
elif [[ $(wc -l < "$T/stderr") -ne 1 ]]; then bad "dir as output: $(cat "$T/stderr")"
elif ls "$T"/ro.tmp.* >/dev/null 2>&1; then bad "dir as output: left a temporary"; else ok; fi
# an existing good output is not clobbered by a failing run
echo keep > "$T/keep.npy"
"$BIN" quant "$T/trunc.npy" --out "$T/keep.npy" >/dev/null 2>&1
[[ $(cat "$T/keep.npy") == keep ]] && ok || bad "failing run overwrote an existing output"
"$BIN" quant --help | grep -q -- '--split mean' && ok || bad "--help lists --split"

# --- prepare / train / eval / sample --------------------------------------------
# expect_err NAME PATTERN CMD...: non-zero exit, one stderr line matching PATTERN
expect_err() {
    local name=$1 pat=$2; shift 2
    if "$@" >/dev/null 2>"$T/stderr"; then bad "$name: exit 0"
    elif [[ $(wc -l < "$T/stderr") -ne 1 ]] || ! grep -q -- "$pat" "$T/stderr"; then bad "$name: $(cat "$T/stderr")"
    else ok; fi
}
for i in 1 2 3 4 5 6; do cat README.md; done > "$T/doc.txt"
"$BIN" prepare --out "$T/d/nested" --vocab 400 "$T/doc.txt" >"$T/prep" 2>&1 && grep -q 'prepared' "$T/prep" \
    && [[ -s $T/d/nested/train_000000.bin && -s $T/d/nested/val_000000.bin && -s $T/d/nested/tokenizer.bpe ]] \
    && ok || bad "prepare: $(cat "$T/prep")"
cat > "$T/cfg.json" <<'JSON'
{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}
JSON
D=$T/d/nested
TR=("$BIN" train --config "$T/cfg.json" --data "$D" --batch 2 --seq 32 --val-batches 2 --quiet)
"${TR[@]}" --recipe averis --steps 6 --out "$T/run" >"$T/train.out" 2>&1 && grep -q '^final: steps 6' "$T/train.out" \
    && [[ $(wc -l < "$T/run/log.csv") -eq 7 && -s $T/run/ckpt_00000006/model.safetensors && -s $T/run/ckpt_00000006/config.json ]] \
    && ok || bad "train: $(cat "$T/train.out")"
"$BIN" eval "$T/run" --data "$D" --batch 2 --batches 2 >"$T/eval" 2>&1 && grep -q 'val loss [0-9]' "$T/eval" && grep -q 'recipe averis' "$T/eval" \
    && ok || bad "eval: $(cat "$T/eval")"
"$BIN" sample "$T/run" --tokens 12 --prompt "The " --seed 3 >"$T/s1" 2>&1 && "$BIN" sample "$T/run" --tokens 12 --prompt "The " --seed 3 >"$T/s2" 2>&1 \
    && [[ $(head -c 4 "$T/s1") == "The " ]] && cmp -s "$T/s1" "$T/s2" && ok || bad "sample: $(cat "$T/s1")"
# bad input: each a one-line error and a non-zero exit
expect_err "unknown recipe" "unknown recipe 'fp5'" "${TR[@]}" --recipe fp5 --steps 2 --out "$T/r2"
echo '{"hidden_size": 30, "num_attention_heads": 4, "num_key_value_heads": 3}' > "$T/bad.json"
expect_err "kv heads not dividing heads" "num_key_value_heads = 3 does not divide num_attention_heads = 4" "$BIN" train --config "$T/bad.json" --data "$D" --out "$T/r3"
echo '{"num_attention_heads": 4, "num_key_value_heads": 3}' > "$T/bad2.json"
expect_err "kv heads" "num_key_value_heads = 3 does not divide" "$BIN" train --config "$T/bad2.json" --data "$D" --out "$T/r4"
expect_err "fresh run over a checkpoint" "pass --resume" "${TR[@]}" --recipe averis --steps 6 --out "$T/run"
expect_err "missing data" "no train shards" "${TR[@]}" --recipe bf16 --steps 2 --data "$T/nowhere" --out "$T/r5"
expect_err "bad number" "--steps needs an integer" "$BIN" train --steps 1x
expect_err "bad device" "--device must be cpu or cuda (got 'tpu')" "${TR[@]}" --device tpu --steps 2 --out "$T/r7"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    # no GPU here: a one-line reason (no GPU, or a build without CUDA), and nothing written
    expect_err "cuda without a GPU" "no usable GPU\|built without CUDA" "${TR[@]}" --device cuda --steps 2 --out "$T/r8"
    [[ ! -e $T/r8 ]] && ok || bad "train --device cuda without a GPU created $T/r8"
fi
expect_err "resume on nothing" "holds no checkpoint" "${TR[@]}" --recipe bf16 --steps 2 --out "$T/empty" --resume
# data parallel (docs/multigpu.md): 2 ranks (threads, on the CPU) × batch 1 = one process × batch 2, fp32 recipe
"${TR[@]}" --recipe fp32 --steps 4 --batch 2 --out "$T/dp_one" >/dev/null 2>&1 \
    && "${TR[@]}" --recipe fp32 --steps 4 --batch 1 --gpus 2 --out "$T/dp_two" >"$T/dp.out" 2>&1 \
    && grep -q '^final: steps 4' "$T/dp.out" \
    && awk -F, 'NR == FNR { a[$1] = $4; next } FNR > 1 { d = $4 - a[$1]; if (d < 0) d = -d; if (d > 1e-5 * a[$1]) bad++ } END { exit bad > 0 }' \
        "$T/dp_one/log.csv" "$T/dp_two/log.csv" \
    && ok || bad "train --gpus 2 (cpu) vs --batch 2: $(cat "$T/dp.out")"
expect_err "bad --grad-dtype" "--grad-dtype must be fp32 or bf16" "${TR[@]}" --gpus 2 --grad-dtype fp16 --out "$T/dpr1"
# the gradients in 0.01 MiB buckets (3 or 4 here) vs one all-reduce: the same log; the startup line names the
# buckets and the moments a rank holds (its shard and the tail: some bytes saved)
"$BIN" train --config "$T/cfg.json" --data "$D" --batch 1 --seq 32 --val-batches 2 --recipe fp32 --steps 4 --gpus 2 \
        --dp-buckets 0.01 --out "$T/dp_b" >"$T/dpb.out" 2>&1 \
    && "${TR[@]}" --batch 1 --recipe fp32 --steps 4 --gpus 2 --dp-buckets 0 --out "$T/dp_nb" >/dev/null 2>&1 \
    && grep -q "AdamW moments of [0-9]* parameters on this rank ([0-9]* bytes; [1-9][0-9]* bytes" "$T/dpb.out" \
    && grep -q "in [2-9] buckets of" "$T/dpb.out" \
    && diff <(cut -d, -f1-6 "$T/dp_b/log.csv") <(cut -d, -f1-6 "$T/dp_nb/log.csv") >/dev/null \
    && ok || bad "train --gpus 2 --dp-buckets 0.01 vs 0: $(cat "$T/dpb.out")"
expect_err "bad --dp-buckets" "--dp-buckets needs a number" "${TR[@]}" --gpus 2 --dp-buckets -1 --out "$T/dpr5"
expect_err "cpu ranks from the environment" "needs --device cuda" env RANK=0 WORLD_SIZE=2 "${TR[@]}" --out "$T/dpr2"
expect_err "bad RANK" "RANK='x'" env RANK=x WORLD_SIZE=2 "${TR[@]}" --out "$T/dpr3"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    expect_err "--gpus 1 without a GPU" "GPU\|CUDA\|NCCL\|cuda" "${TR[@]}" --device cuda --gpus 1 --steps 2 --out "$T/dpr4"
    [[ ! -e $T/dpr4 ]] && ok || bad "train --device cuda --gpus 1 without a GPU created $T/dpr4"
fi
expect_err "missing checkpoint" "no checkpoint here" "$BIN" eval "$T/nowhere" --data "$D"
cp -r "$T/run/ckpt_00000006" "$T/ck" && rm -f "$T/ck/MANIFEST" # hand-edited below: the loaders' own checks
head -c 5000 "$T/run/ckpt_00000006/model.safetensors" > "$T/ck/model.safetensors"
expect_err "truncated safetensors" "model.safetensors" "$BIN" eval "$T/ck" --data "$D"
cp -r "$D" "$T/dbad" && head -c 1500 "$D/train_000000.bin" > "$T/dbad/train_000000.bin"
expect_err "truncated shard" "truncated" "${TR[@]}" --recipe bf16 --steps 2 --data "$T/dbad" --out "$T/r6"
printf 'XXXX' | dd of="$T/dbad/val_000000.bin" conv=notrunc status=none
expect_err "bad shard magic" "bad shard header" "$BIN" eval "$T/run" --data "$T/dbad"
sed 's/"hidden_size": 32/"hidden_size": 48/' "$T/run/ckpt_00000006/config.json" > "$T/ck/config.json"
cp "$T/run/ckpt_00000006/model.safetensors" "$T/ck/model.safetensors"
expect_err "wrong shapes" "has shape" "$BIN" eval "$T/ck" --data "$D"
# resume: a killed run's state.bin corrupt → error, previous checkpoint intact
sum=$(md5sum < "$T/run/ckpt_00000006/model.safetensors")
printf 'junk' | dd of="$T/run/ckpt_00000006/state.bin" bs=1 seek=100 conv=notrunc status=none
expect_err "corrupt state" "corrupt" "${TR[@]}" --recipe averis --steps 8 --out "$T/run" --resume
[[ $(md5sum < "$T/run/ckpt_00000006/model.safetensors") == "$sum" && $(cat "$T/run/latest") == ckpt_00000006 ]] \
    && ok || bad "corrupt-state resume touched the checkpoint"

# --- analyze --------------------------------------------------------------------
"$BIN" analyze --npy "$FX/meanbias.in.npy" --json "$T/an.json" >"$T/an.out" 2>&1 \
    && grep -q '^R ' "$T/an.out" && grep -q 'nvfp4 split' "$T/an.out" && grep -q '"cos_mu_v1"' "$T/an.json" \
    && ok || bad "analyze --npy: $(cat "$T/an.out")"
"$BIN" analyze "$T/run" --data "$D" --batch 2 --seq 32 --out "$T/rows.csv" >"$T/an2.out" 2>&1 \
    && [[ $(grep -c ',attn_in,' "$T/rows.csv") -eq 2 && $(grep -c ',grad_ffn_down,' "$T/rows.csv") -eq 2 \
          && $(wc -l < "$T/rows.csv") -eq 17 ]] && ok || bad "analyze checkpoint: $(cat "$T/an2.out")"
expect_err "analyze needs one input" "either --npy" "$BIN" analyze
expect_err "analyze 3-D" "2-D float32" "$BIN" analyze --npy "$T/three.npy"
# --- issue 20 regressions -------------------------------------------------------
# a failing quant (unwritable --out) leaves an existing --packed untouched and no temporary
echo keep > "$T/keep.packed"
"$BIN" quant "$FX/normal.in.npy" --out "$T/nodir/o.npy" --packed "$T/keep.packed" >/dev/null 2>&1
[[ $(cat "$T/keep.packed") == keep ]] && ! ls "$T"/keep.packed.tmp.* >/dev/null 2>&1 && ok || bad "failing quant overwrote --packed"
# prepare: no text is an error; a tokenizer beyond uint16 ids is refused by name
# expect_last NAME PATTERN CMD...: non-zero exit (not a crash), the last stderr line matching PATTERN
expect_last() {
    local name=$1 pat=$2; shift 2
    "$@" >/dev/null 2>"$T/stderr"; local rc=$?
    if [[ $rc -eq 0 || $rc -ge 128 ]]; then bad "$name: exit $rc"
    elif ! tail -1 "$T/stderr" | grep -q -- "$pat"; then bad "$name: $(cat "$T/stderr")"
    else ok; fi
}
: > "$T/empty.txt"
expect_last "prepare without text" "no text" "$BIN" prepare --out "$T/pe" "$T/empty.txt"
{ printf 'averis-bpe 1\nvocab_size 65537\nmerges 65280\n'; yes '32 32' | head -n 65280; } > "$T/big.bpe"
expect_last "prepare vocab > 65536" "vocab_size 65537 exceeds 65536" "$BIN" prepare --out "$T/pv" --tokenizer "$T/big.bpe" "$T/doc.txt"
# sample: tokens of 2048 bytes come out whole (the decoder once printed stack bytes instead)
{ printf 'averis-bpe 1\nvocab_size 512\nmerges 255\n61 61\n'; for i in $(seq 257 266); do echo "$i $i"; done
  for i in $(seq 268 511); do echo "267 61"; done; } > "$T/long.bpe"
"$BIN" sample "$T/run" --tokens 40 --seed 5 --tokenizer "$T/long.bpe" > "$T/s3" 2>&1 \
    && grep -q "$(printf '=%.0s' $(seq 2048))" "$T/s3" && ok || bad "sample with 2048-byte tokens: $(head -c 200 "$T/s3" | od -c | head -3)"
# analyze: a 1×16384 row is cheap; nan/inf metrics are JSON null, not bare nan
python3 - "$T/wide.npy" "$T/infs.npy" <<'PY'
import struct, sys, math
def npy(path, rows, cols, vals):
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, cols)
    h = d.encode() + b" " * ((64 - (10 + len(d) + 1) % 64) % 64) + b"\n"
    open(path, "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + struct.pack("<%df" % len(vals), *vals))
npy(sys.argv[1], 1, 16384, [math.sin(i) for i in range(16384)])
npy(sys.argv[2], 32, 16, [math.inf if i % 5 == 0 else float(i) for i in range(512)])
PY
"$BIN" analyze --npy "$T/wide.npy" >"$T/an3.out" 2>&1 && grep -q '^R ' "$T/an3.out" && ok || bad "analyze 1x16384: $(cat "$T/an3.out")"
"$BIN" analyze --npy "$T/infs.npy" --json "$T/inf.json" >/dev/null 2>&1
python3 -c "import json,sys; json.load(open(sys.argv[1]), parse_constant=lambda c: sys.exit('bare ' + c))" "$T/inf.json" \
    && grep -q null "$T/inf.json" && ok || bad "analyze --json with inf: $(cat "$T/inf.json")"
expect_last "analyze --device tpu" "--device 'tpu': cpu or cuda" "$BIN" analyze "$T/run" --device tpu
# configs: a Qwen3-MoE config trains and checkpoints as one; a MoE field in a
# dense config and an unknown field are refused by name; NVFP4 widths named at load
cat > "$T/moe.json" <<'JSON'
{"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 512, "hidden_size": 32,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_hidden_layers": 2,
 "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "output_router_logits": true}
JSON
"${TR[@]}" --config "$T/moe.json" --recipe averis --steps 2 --out "$T/moe" >/dev/null 2>&1 \
    && grep -q '"model_type": "qwen3_moe"' "$T/moe/ckpt_00000002/config.json" && ok || bad "Qwen3-MoE config trains"
sed 's/"head_dim": 8/"head_dim": 8, "num_experts": 4/' "$T/cfg.json" > "$T/densemoe.json"
expect_err "MoE field in a dense config" "field num_experts" "${TR[@]}" --config "$T/densemoe.json" --steps 2 --out "$T/r9"
sed 's/"head_dim": 8/"head_dim": 8, "hidden_sise": 3/' "$T/cfg.json" > "$T/typo.json"
expect_err "unknown config field" "unknown field hidden_sise" "${TR[@]}" --config "$T/typo.json" --steps 2 --out "$T/r10"
sed 's/"hidden_size": 32/"hidden_size": 40/' "$T/cfg.json" > "$T/w40.json"
expect_err "fp4 width" "hidden_size = 40 is not a multiple of 16" "${TR[@]}" --config "$T/w40.json" --recipe nvfp4 --steps 2 --out "$T/r11"
[[ ! -e $T/r9 && ! -e $T/r10 && ! -e $T/r11 ]] && ok || bad "a refused config created an output directory"
# --- kill loop: SIGKILL at seeded moments, --resume after each; nothing lost (tests/kill_loop.sh; the full count: 60) ---
bash tests/kill_loop.sh "$BIN" "${AVERIS_KILLS:-8}" 1 >"$T/kl" 2>&1 && grep -q "final checkpoint and log equal" "$T/kl" \
    && { ok; echo "      $(cat "$T/kl")"; } || bad "$(cat "$T/kl")"
# --- corpus builder and recipe sweep at toy scale (tests/test_sweep.sh: pairing, CSV, resume) ---
bash tests/test_sweep.sh "$BIN" >"$T/sw" 2>&1 && { ok; echo "      sweep: $(tail -1 "$T/sw")"; } || bad "test_sweep.sh: $(cat "$T/sw")"
for c in prepare train eval sample analyze; do "$BIN" $c --help | grep -q "usage: averis $c" && ok || bad "$c --help"; done

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
