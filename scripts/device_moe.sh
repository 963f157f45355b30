#!/usr/bin/env bash
# device_moe.sh — the Qwen3-MoE checks that need the device machine (its
# torch + transformers), in one call (issue 15). Expected time: ~4 minutes
# (most of it the build).
#   1. build (CPU library, the averis binary, the test binary)
#   2. the MoE unit tests (fixtures vs transformers, recipes, empty experts,
#      configs, five recipes training, bit-exact resume)
#   3. the fixtures regenerated with the device's transformers
#      (tests/gen_qwen3_moe_fixture.py): its Qwen3MoeForCausalLM still gives
#      the committed numbers (logits, ce, aux, every gradient within 1e-5)
#      and save_pretrained still writes the per-expert names averis reads
#   4. a MoE trained by averis (moe.json below, 30 steps, averis recipe, CPU)
#      loaded with Qwen3MoeForCausalLM.from_pretrained: its logits equal the
#      ones `averis eval --dump` writes (max rel err < 1e-4)
#   5. `train --device cuda` on a MoE config: the clear "not implemented on
#      the GPU" error (the GPU path is not built yet: docs/moe.md)
# Writes logs to $OUT (or out/device_moe). Exit status: the number of failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_moe}
RUNS=${RUNS:-/tmp/averis_moe_runs}
rm -rf "$RUNS"; mkdir -p "$OUT" "$RUNS"
JOBS=$(nproc 2>/dev/null || echo 4)
PY=${PY:-python3}
fail=0
step() { echo; echo "=== $*"; }
note_fail() { echo "FAILED: $*"; fail=$((fail + 1)); }

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee "$OUT/versions.txt"

step "build"
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" all build-tests >"$RUNS/build.log" 2>&1; then
    tail -30 "$RUNS/build.log"; echo "BUILD FAILED"; exit 1
fi

step "MoE unit tests"
for t in test_moe_config test_moe_matches_transformers test_moe_recipes_and_empty_experts test_moe_train_resume; do
    build/test_averis $t 2>&1 | tee -a "$OUT/test_moe.log" | grep -v '^[0-9]* passed' || true
    grep -q "^ok    $t" "$OUT/test_moe.log" || note_fail "$t"
done

step "fixtures regenerated with this transformers"
if $PY tests/gen_qwen3_moe_fixture.py "$RUNS/fix" >"$OUT/regen.log" 2>&1; then
    cat "$OUT/regen.log" | grep -v Writing
    $PY - "$RUNS/fix" tests/fixtures/qwen3_moe >"$OUT/regen_compare.log" 2>&1 <<'PY' || note_fail "regenerated fixtures differ"
import sys
from safetensors.numpy import load_file
import numpy as np
bad = 0
for name in ("moe", "moe_sparse"):
    a = load_file(f"{sys.argv[1]}/{name}/fixture.safetensors"); b = load_file(f"{sys.argv[2]}/{name}/fixture.safetensors")
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    worst = max((np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(b[k]).max(), 1e-30), k) for k in a)
    print(f"{name}: worst rel diff vs the committed fixture {worst[0]:.2e} ({worst[1]})")
    bad += int(worst[0] > 1e-5)
sys.exit(int(bad))
PY
    cat "$OUT/regen_compare.log"
else
    tail -20 "$OUT/regen.log"; note_fail "gen_qwen3_moe_fixture.py"
fi

step "from_pretrained of an averis MoE checkpoint"
for i in 1 2 3 4 5 6 7 8; do cat README.md docs/*.md; done >"$RUNS/doc.txt"
build/averis prepare --out "$RUNS/data" --vocab 400 "$RUNS/doc.txt" >"$RUNS/prepare.log" 2>&1 || note_fail "prepare"
cat >"$RUNS/moe.json" <<'JSON'
{"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 512, "hidden_size": 64,
 "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 16, "max_position_embeddings": 128, "tie_word_embeddings": false, "num_experts": 8,
 "num_experts_per_tok": 2, "moe_intermediate_size": 64, "norm_topk_prob": true, "mlp_only_layers": [1],
 "output_router_logits": true, "router_aux_loss_coef": 0.01}
JSON
if build/averis train --config "$RUNS/moe.json" --data "$RUNS/data" --recipe averis --batch 4 --seq 64 --steps 30 \
        --out "$RUNS/run" --quiet >"$OUT/train_cpu.log" 2>&1; then
    tail -2 "$OUT/train_cpu.log"
    build/averis eval "$RUNS/run" --data "$RUNS/data" --recipe fp32 --batch 2 --seq 64 --batches 2 \
        --dump "$RUNS/dump" >"$OUT/eval.log" 2>&1 || note_fail "eval --dump"
    ck="$RUNS/run/$(cat "$RUNS/run/latest")"
    $PY tests/gen_qwen3_moe_fixture.py --check-ckpt "$ck" "$RUNS/dump.tokens.npy" "$RUNS/dump.logits.npy" 2>&1 \
        | grep -v Loading | tee "$OUT/from_pretrained.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "from_pretrained logits"
else
    tail -5 "$OUT/train_cpu.log"; note_fail "train MoE on the CPU"
fi

step "train --device cuda on a MoE config"
if build/averis train --device cuda --config "$RUNS/moe.json" --data "$RUNS/data" --batch 2 --seq 64 --steps 2 \
        --out "$RUNS/gpu" --quiet >"$OUT/train_cuda.log" 2>&1; then
    note_fail "train --device cuda accepted a MoE config without a GPU MoE path"
else
    grep -q "not implemented on the GPU" "$OUT/train_cuda.log" && echo "refused as expected: $(tail -1 "$OUT/train_cuda.log")" \
        || { tail -3 "$OUT/train_cuda.log"; note_fail "unclear error for MoE on the GPU"; }
fi

step "result"
echo "$fail failure(s); logs in $OUT"
exit $fail
