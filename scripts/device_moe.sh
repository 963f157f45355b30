#!/usr/bin/env bash
# device_moe.sh — the Qwen3-MoE checks that need the device machine (its
# torch + transformers, its GPU), in one call (issue 15). Expected time:
# ~4 minutes for the CPU part (most of it the build), ~6-10 more for the GPU
# part (the CUDA build, the device tests under memcheck, two 30-step runs,
# the benches; the 7B-A1.5B bench builds a 29 GB host model per try).
# MOE_PARTS="cpu gpu" (default) or one of them; MOE_BENCH=0 skips the
# benches (step 7), MOE_BENCH_7B=0 the 7B-A1.5B one, MOE_7B_LAYERS the layer
# counts it tries (default "16 12 8 6 4 2"; 6 fit an H100 on 2026-12-06),
# MOE_MEMCHECK=0 the memcheck run.
#   1. build (CPU library, the averis binary, the test binaries; CUDA ones for gpu)
#   2. the MoE unit tests (fixtures vs transformers, recipes, empty experts,
#      configs, five recipes training, bit-exact resume)
#   3. the fixtures regenerated with the device's transformers
#      (tests/gen_qwen3_moe_fixture.py): its Qwen3MoeForCausalLM still gives
#      the committed numbers (logits, ce, aux, every gradient within 1e-5)
#      and save_pretrained still writes the per-expert names averis reads
#   4. a MoE trained by averis (moe.json below, 30 steps, averis recipe, CPU)
#      loaded with Qwen3MoeForCausalLM.from_pretrained: its logits equal the
#      ones `averis eval --dump` writes (max rel err < 1e-4)
#   GPU part (cuda/moe.cu; written 2026-12-06 without a GPU run, so this is
#   its first run: docs/moe.md):
#   5. test_cuda moe_vs_cpu_{fp32act,bf16act}: one step of moe-tiny per recipe,
#      GPU vs CPU loss (incl. aux) and every gradient within the dense model's
#      bounds, the step replayed bit for bit; then the same under
#      compute-sanitizer memcheck (the routing/sort/combine indexing)
#   6. train --device cuda on moe.json (30 steps, averis and bf16) vs the CPU
#      runs: per-step loss within 1e-2 relative, step 1 within 2e-3
#   5b. the experts' GEMM modes: our grouped GEMM against fp64 and at the
#      linear (test_cuda moe_grouped_gemm_vs_fp64, moe_group_linear_own_gemm),
#      moe-tiny 3 steps in AVERIS_MOE_GROUPED 0, 2, 1, 3
#      (moe_grouped_vs_per_expert), and moe_vs_cpu in mode 3
#   7. bench_cuda step: moe-small (batch 8 × 1024) per recipe, tokens/s and
#      the averis/nvfp4, nvfp4/bf16 ratios, then in AVERIS_MOE_GROUPED 2 and
#      3; qwen3-moe-7b-a1.5b with as many layers as fit (16, 12, 8, 6, 4, 2
#      tried in turn; batch 4 × 1024)
# Writes logs to $OUT (or out/device_moe). Exit status: the number of failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_moe}
PARTS=${MOE_PARTS:-cpu gpu}
has() { [[ " $PARTS " == *" $1 "* ]]; }
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
CUDA_ARGS=()
has gpu && CUDA_ARGS=(CUDA=1 cuda-tests build/bench_cuda)
CPU_TESTS=(); has cpu && CPU_TESTS=(build-tests)
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" all "${CPU_TESTS[@]}" "${CUDA_ARGS[@]}" >"$RUNS/build.log" 2>&1; then
    tail -30 "$RUNS/build.log"; echo "BUILD FAILED"; exit 1
fi

if has cpu; then
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

fi # cpu

step "data and a small qwen3_moe config"
# a text that does not change with the docs (before 2026-12-06 it was README.md
# and docs/*.md, so every docs edit changed the runs compared in step 6)
cat tasks/default_cont.jsonl tasks/default_cont.jsonl >"$RUNS/doc.txt"
build/averis prepare --out "$RUNS/data" --vocab 400 "$RUNS/doc.txt" >"$RUNS/prepare.log" 2>&1 || note_fail "prepare"
cat >"$RUNS/moe.json" <<'JSON'
{"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 512, "hidden_size": 64,
 "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 16, "max_position_embeddings": 128, "tie_word_embeddings": false, "num_experts": 8,
 "num_experts_per_tok": 2, "moe_intermediate_size": 64, "norm_topk_prob": true, "mlp_only_layers": [1],
 "output_router_logits": true, "router_aux_loss_coef": 0.01}
JSON
TRAIN=(--config "$RUNS/moe.json" --data "$RUNS/data" --batch 4 --seq 64 --steps 30 --seed 1 --quiet)

if has cpu; then
step "from_pretrained of an averis MoE checkpoint"
if build/averis train "${TRAIN[@]}" --recipe averis --out "$RUNS/run" >"$OUT/train_cpu.log" 2>&1; then
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

fi # cpu

if has gpu; then
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step "device tests: moe-tiny, GPU vs CPU per recipe"
build/test_cuda moe_vs_cpu 2>&1 | tee "$OUT/test_cuda_moe.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "test_cuda moe_vs_cpu"
if [[ ${MOE_MEMCHECK:-1} == 0 ]]; then
    echo "memcheck skipped (MOE_MEMCHECK=0)" | tee "$OUT/memcheck_moe.log"
elif command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 9 build/test_cuda moe_vs_cpu_bf16act >"$OUT/memcheck_moe.log" 2>&1 \
        || { tail -30 "$OUT/memcheck_moe.log"; note_fail "memcheck test_cuda moe_vs_cpu_bf16act"; }
    tail -3 "$OUT/memcheck_moe.log"
else
    echo "compute-sanitizer not found: memcheck skipped" | tee "$OUT/memcheck_moe.log"
fi

step "the experts' GEMM modes: our grouped GEMM (AVERIS_MOE_GROUPED=3)"
for t in moe_grouped_gemm_vs_fp64 moe_group_linear_own_gemm moe_grouped_vs_per_expert; do
    build/test_cuda $t 2>&1 | tee -a "$OUT/test_cuda_moe_modes.log" | tail -1
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "test_cuda $t"
done
AVERIS_MOE_GROUPED=3 build/test_cuda moe_vs_cpu >"$OUT/test_cuda_moe_g3.log" 2>&1 || note_fail "test_cuda moe_vs_cpu AVERIS_MOE_GROUPED=3"
echo "moe_vs_cpu, AVERIS_MOE_GROUPED=3: $(tail -1 "$OUT/test_cuda_moe_g3.log")"

step "train --device cuda on a MoE config: 30 steps vs the CPU"
for r in averis bf16; do
    build/averis train "${TRAIN[@]}" --recipe $r --out "$RUNS/cpu_$r" >"$RUNS/cpu_$r.log" 2>&1 \
        || note_fail "cpu train $r: $(tail -1 "$RUNS/cpu_$r.log")"
    build/averis train "${TRAIN[@]}" --recipe $r --device cuda --out "$RUNS/gpu_$r" >"$OUT/train_gpu_$r.log" 2>&1 \
        || { tail -3 "$OUT/train_gpu_$r.log"; note_fail "gpu train $r"; continue; }
    $PY - "$RUNS/cpu_$r/log.csv" "$RUNS/gpu_$r/log.csv" $r <<'PY' 2>&1 | tee -a "$OUT/train_cpu_vs_gpu.txt"
import csv, sys
a = list(csv.DictReader(open(sys.argv[1]))); b = list(csv.DictReader(open(sys.argv[2])))
assert len(a) == len(b) == 30, (len(a), len(b))
d = [abs(float(x['loss']) - float(y['loss'])) / float(x['loss']) for x, y in zip(a, b)]
print(f"{sys.argv[3]}: loss cpu {a[0]['loss']} -> {a[-1]['loss']}, gpu {b[0]['loss']} -> {b[-1]['loss']}; "
      f"step 1 rel {d[0]:.2e}, max rel over 30 steps {max(d):.2e}")
ok = d[0] <= 2e-3 and max(d) <= 1e-2 and float(b[-1]['loss']) < float(b[0]['loss'])
print("within bounds" if ok else "OUT OF BOUNDS")
sys.exit(0 if ok else 1)
PY
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "MoE $r losses cpu vs gpu"
done

if [[ ${MOE_BENCH:-1} != 0 ]]; then
step "bench: moe-small, tokens/s per recipe"
build/bench_cuda step --config moe-small --batch 8 --seq 1024 --steps 5 2>&1 | tee "$OUT/bench_moe_small.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "bench moe-small"
AVERIS_CUDA_PROFILE=1 build/bench_cuda step --config moe-small --batch 8 --seq 1024 --steps 3 --recipes bf16,averis \
    >"$OUT/bench_moe_small_profile.txt" 2>&1 || note_fail "bench moe-small profile"
build/bench_cuda step --config moe-small --batch 8 --seq 1024 --steps 5 --moe-modes 2,3 2>&1 \
    | tee "$OUT/bench_moe_small_modes.txt" | tail -4
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "bench moe-small modes 2,3"

if [[ ${MOE_BENCH_7B:-1} != 0 ]]; then
    step "bench: qwen3-moe-7b-a1.5b, as many layers as fit"
    done7=0
    for L in ${MOE_7B_LAYERS:-16 12 8 6 4 2}; do
        if build/bench_cuda step --config qwen3-moe-7b-a1.5b --layers $L --batch 4 --seq 1024 --steps 3 \
                >"$OUT/bench_moe_7b_L$L.txt" 2>&1; then
            cat "$OUT/bench_moe_7b_L$L.txt"; done7=1; break
        fi
        echo "$L layers: $(grep -m1 -iE 'cannot allocate|error|fail' "$OUT/bench_moe_7b_L$L.txt")"
    done
    [[ $done7 == 1 ]] || note_fail "bench qwen3-moe-7b-a1.5b: no layer count fits"
fi
fi # MOE_BENCH
fi # gpu

step "result"
echo "$fail failure(s); logs in $OUT"
exit $fail
