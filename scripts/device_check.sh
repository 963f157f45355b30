#!/usr/bin/env bash
# device_check.sh — the CUDA path's checks and kernel benchmarks in one call
# of the device machine (10 minutes, the build included), on a GPU machine:
#   1. build (CPU library + CUDA path) and the device test binaries
#   2. test_cuda (tests/cuda), run under compute-sanitizer memcheck in parts
#      at once (together every test, once; checked): quantize kernels
#      bit-exact vs the CPU spec over the adversarial corpus, colstats,
#      dequantize, qlinear per recipe, one model step per recipe vs model.c,
#      the fused quantization, MoE, data parallel's GPU half; the kernel lab's
#      check (dev/cuda) under memcheck; test_cudnn_att
#   3. beside 2., in the foreground: the tiny config's first 50 steps, CPU vs
#      GPU losses, bf16 and averis (BF16 activations and cuDNN attention, the
#      defaults), averis with fp32 activations, with P materialised and with
#      flash attention; checkpoints both ways between CPU and GPU;
#      Qwen3-0.6B trains 60 steps; NCCL data parallel at N = 1
#      (scripts/device_nccl.sh quick), if built
# Then, unless DEVICE_CHECK_BENCH=0, alone on the GPU: bench_cuda step at the
# 0.6B and the 114M shapes and the 0.6B profile, bench_cuda quant and fused,
# quant_lab bench; DEVICE_CHECK_VARIANTS=1 adds the step with the attention,
# activation and fused-quantization variants. Issue 14's targets (our steps
# against the PyTorch peers in one run) are scripts/device_targets.sh, a call
# of its own: the peers' compilation does not fit beside these checks.
# While step 2 runs beside step 3, OpenMP threads yield (OMP_WAIT_POLICY) and
# each memcheck process has 2 threads: with spinning threads on all 16 cores
# in every process (H100 host, 2026-12-07) test_cuda's model checks took
# 140 s each and the call ran out.
# Needs: nvcc, a GPU, data/default (scripts/get_data.sh; carried to the
# device). Writes logs to $OUT (or out/device_check). Exit status: failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_check}   # logs and tables
RUNS=${RUNS:-/tmp/averis_device_runs}   # training runs (checkpoints are large)
mkdir -p "$OUT" "$RUNS"
JOBS=$(nproc 2>/dev/null || echo 4)
fail=0
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
note_fail() { echo "FAILED: $*"; fail=$((fail + 1)); }

source scripts/device_env.sh  # OpenBLAS from .debs/ (MAKE_CC)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step "build"
if ! make -s -j"$JOBS" "${MAKE_CC[@]}" CUDA=1 all cuda-tests >"$RUNS/build.log" 2>&1; then
    tail -30 "$RUNS/build.log"; echo "BUILD FAILED"; exit 1
fi
grep -E "✓|✗" "$RUNS/build.log" | head -8

# lr 1e-3: at the demo's 3e-3 this tiny model is chaotic (loss spikes at different
# steps from 1e-3-sized differences, measured 2026-11-23), which would test the weather
TRAIN=(--config tiny --data data/default --steps 50 --batch 8 --seq 128 --lr 1e-3 --seed 1 --val-every 25 --log-every 25)
# test_cuda's parts (comma-separated name filters; together every test once, checked below);
# no part with more than two model checks: under memcheck on 2026-12-07 (H100, cores
# oversubscribed) a dense one took 140-150 s, moe_vs_cpu_fp32act 298 s, and a part has 420 s
TEST_PARTS=(e2m1,quantize_bitexact,transposed,colstats,qlinear_vs_cpu,flash_attention,model_vs_cpu_flash
            model_vs_cpu_fp32act model_vs_cpu_bf16act,model_vs_cpu_naive
            model_vs_cpu_seq48,model_vs_cpu_cudnn
            moe_vs_cpu_fp32act,moe_seg,moe_group_linear_bitexact
            moe_vs_cpu_bf16act,moe_group_linear_grouped,moe_grouped,moe_group_linear_own
            fused_ dp_)
SAN=()
if command -v compute-sanitizer >/dev/null; then
    SAN=(compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9)
else
    note_fail "compute-sanitizer not found: the tests run without memcheck"
fi
export OMP_WAIT_POLICY=PASSIVE
BGENV=(OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1)
rm -f "$RUNS"/tests.rcs
step "test_cuda in ${#TEST_PARTS[@]} parts and quant_lab check, under memcheck, in the background; test_cudnn_att"
BG=()
for i in "${!TEST_PARTS[@]}"; do
    ( env "${BGENV[@]}" timeout 420 "${SAN[@]}" build/test_cuda "${TEST_PARTS[$i]}" >"$OUT/test_cuda_$i.log" 2>&1
      echo "test_cuda_$i $?" >>"$RUNS/tests.rcs" ) &
    BG+=($!)
done
( env "${BGENV[@]}" timeout 420 "${SAN[@]}" build/quant_lab check >"$OUT/quant_lab_check.log" 2>&1
  echo "quant_lab_check $?" >>"$RUNS/tests.rcs" ) &
BG+=($!)
if grep -q "✓ cuDNN attention" "$RUNS/build.log"; then
    build/test_cudnn_att 2>&1 | tee "$OUT/test_cudnn_att.log" || note_fail "test_cudnn_att"
else
    note_fail "the build found no cuDNN attention: $(grep "cuDNN attention" "$RUNS/build.log")"
fi

step "tiny: first 50 steps, CPU vs GPU"
# bf16, averis: the defaults (BF16 activations, attention by cuDNN);
# averis:naive = attention with P materialised (AVERIS_ATTN=naive);
# averis:flash = the GPU run with attention through cuda/flash.cu (AVERIS_ATTN=flash);
# averis:fp32act = with fp32 activations between kernels (AVERIS_ACT=fp32), as the CPU keeps them
SPECS=(bf16 averis averis:naive averis:fp32act averis:flash)
for r in bf16 averis; do   # the CPU runs, one per recipe
    rm -rf "$RUNS/tiny_cpu_$r"
    OMP_NUM_THREADS=8 build/averis train "${TRAIN[@]}" --recipe $r --out "$RUNS/tiny_cpu_$r" >/dev/null 2>"$RUNS/tiny_cpu_$r.err" \
        || note_fail "cpu train $r: $(tail -1 "$RUNS/tiny_cpu_$r.err")"
done
for spec in "${SPECS[@]}"; do
    r=${spec%%:*} attn= act=bf16 tag=${spec/:/_}
    [[ $spec == *:flash ]] && attn=flash
    [[ $spec == *:naive ]] && attn=naive
    [[ $spec == *:fp32act ]] && act=fp32
    rm -rf "$RUNS/tiny_gpu_$tag"
    AVERIS_ATTN=$attn AVERIS_ACT=$act build/averis train "${TRAIN[@]}" --recipe $r --out "$RUNS/tiny_gpu_$tag" --device cuda >/dev/null 2>"$RUNS/tiny_gpu_$tag.err" || note_fail "gpu train $spec: $(tail -1 "$RUNS/tiny_gpu_$tag.err")"
done
for spec in "${SPECS[@]}"; do
    r=${spec%%:*} tag=${spec/:/_}
    # |Δloss| / loss per step; the bound covers BF16 attention/LM-head rounding and SR draws on diverged inputs
    # (measured with fp32 activations: bf16 4e-5, averis 8e-4)
    python3 - "$RUNS/tiny_cpu_$r/log.csv" "$RUNS/tiny_gpu_$tag/log.csv" $spec <<'EOF' 2>&1 | tee -a "$OUT/tiny_cpu_vs_gpu.txt"
import csv, sys
a = list(csv.DictReader(open(sys.argv[1]))); b = list(csv.DictReader(open(sys.argv[2])))
assert len(a) == len(b) == 50, (len(a), len(b))
d = [abs(float(x['loss']) - float(y['loss'])) / float(x['loss']) for x, y in zip(a, b)]
first = abs(float(a[0]['loss']) - float(b[0]['loss'])) / float(a[0]['loss'])
va = [float(x['val_loss']) for x in a if x['val_loss']]; vb = [float(y['val_loss']) for y in b if y['val_loss']]
tps_a = sum(float(x['tokens_per_s']) for x in a[5:]) / 45; tps_b = sum(float(y['tokens_per_s']) for y in b[5:]) / 45
print(f"{sys.argv[3]}: step 1 loss cpu {a[0]['loss']} gpu {b[0]['loss']} (rel {first:.2e}); "
      f"max rel diff over 50 steps {max(d):.2e} (mean {sum(d)/len(d):.2e}); "
      f"val cpu {va} gpu {vb}; tokens/s cpu {tps_a:.0f} gpu {tps_b:.0f}")
tol_first, tol = 2e-3, 5e-3
ok = first <= tol_first and max(d) <= tol and all(abs(x - y) / x <= tol for x, y in zip(va, vb))
print("within bounds (step 1: %.0e, every step and val: %.0e)" % (tol_first, tol) if ok else "OUT OF BOUNDS")
sys.exit(0 if ok else 1)
EOF
    [[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "tiny $spec losses"
done

step "checkpoints: GPU checkpoint read by the CPU build, and resumed on the CPU"
ck="$RUNS/tiny_gpu_averis"
gpu_val=$(awk -F, 'NR > 1 && $6 != "" { v = $6 } END { print v }' "$ck/log.csv")
cpu_val=$(build/averis eval "$ck" --data data/default --batch 8 --seq 128 2>"$RUNS/eval.err" | grep -oE "val loss [0-9.]+" | awk '{print $3}')
echo "GPU-logged val loss $gpu_val, CPU eval of the GPU checkpoint $cpu_val"
python3 -c "import sys; a, b = float('$gpu_val'), float('${cpu_val:-nan}'); sys.exit(0 if abs(a - b) / a <= 2e-2 else 1)" \
    || note_fail "eval of the GPU checkpoint on the CPU"
rm -rf "$RUNS/tiny_mix" && cp -r "$ck" "$RUNS/tiny_mix"
build/averis train "${TRAIN[@]}" --steps 60 --recipe averis --out "$RUNS/tiny_mix" --resume >/dev/null 2>"$RUNS/tiny_mix.err" \
    && echo "resumed the GPU checkpoint on the CPU to step $(tail -1 "$RUNS/tiny_mix/log.csv" | cut -d, -f1)" \
    || note_fail "CPU resume of a GPU checkpoint: $(tail -1 "$RUNS/tiny_mix.err")"
# and the other way: a CPU checkpoint resumed on the GPU
rm -rf "$RUNS/tiny_mix2" && cp -r "$RUNS/tiny_cpu_averis" "$RUNS/tiny_mix2"
build/averis train "${TRAIN[@]}" --steps 60 --recipe averis --out "$RUNS/tiny_mix2" --resume --device cuda >/dev/null 2>"$RUNS/tiny_mix2.err" \
    && echo "resumed the CPU checkpoint on the GPU to step $(tail -1 "$RUNS/tiny_mix2/log.csv" | cut -d, -f1)" \
    || note_fail "GPU resume of a CPU checkpoint: $(tail -1 "$RUNS/tiny_mix2.err")"

step "Qwen3-0.6B on the default corpus, --device cuda (averis)"
rm -rf "$RUNS/q06"
build/averis train --config qwen3-0.6b --recipe averis --device cuda --data data/default --out "$RUNS/q06" \
    --steps ${Q06_STEPS:-60} --batch 8 --seq 1024 --lr 3e-4 --val-every 30 --val-batches 4 --log-every 10 2>&1 | tail -9
[[ ${PIPESTATUS[0]} -eq 0 ]] || note_fail "0.6B training"
cp "$RUNS/q06/log.csv" "$OUT/q06_log.csv" 2>/dev/null || note_fail "0.6B log"

step "NCCL data parallel at N = 1 (scripts/device_nccl.sh quick: --gpus 1 vs plain, resume, dead peer)"
if grep -q "✓ NCCL" "$RUNS/build.log"; then
    OUT="$OUT/nccl" RUNS="$RUNS/nccl" BUILD=build DATA=data/default bash scripts/device_nccl.sh quick || note_fail "device_nccl.sh quick"
else
    echo "NCCL not built: skipped"
fi

step "waiting for test_cuda's parts and the lab's check"
for p in "${BG[@]}"; do wait "$p"; done
unset OMP_WAIT_POLICY
while read -r part rc; do
    log="$OUT/$part.log"
    echo "$part: exit $rc; $(grep -hE "passed, [0-9]+ failed" "$log" | tail -1); $(grep -h "ERROR SUMMARY" "$log" | tail -1)"
    # 9: memcheck found errors; 124: timeout; other nonzero: a test failed
    case $rc in
        0) ;;
        9) note_fail "memcheck found errors in $part" ;;
        124) note_fail "$part ran past its 420 s" ;;
        *) note_fail "$part failed (exit $rc): $(grep -E "^FAIL" "$log" | tr '\n' ' ')" ;;
    esac
    [[ ${#SAN[@]} -eq 0 ]] || grep -q "ERROR SUMMARY: 0 errors" "$log" || note_fail "memcheck reported errors in $part"
done <"$RUNS/tests.rcs"
[[ $(wc -l <"$RUNS/tests.rcs") -eq $(( ${#TEST_PARTS[@]} + 1 )) ]] || note_fail "not every part reported"
cat "$OUT"/test_cuda_*.log >"$OUT/test_cuda.log"
# the parts together ran every test of test_cuda, once
n_all=$(build/test_cuda --list 2>/dev/null | wc -l)
n_ran=$(grep -hE "^(ok  |FAIL)  " "$OUT"/test_cuda_*.log | awk '{print $2}' | sort -u | wc -l)
n_lines=$(grep -cE "^(ok  |FAIL)  " "$OUT/test_cuda.log")
echo "test_cuda: $n_ran distinct tests ran ($n_lines results) of the $n_all it has; $(grep -c "^ok  " "$OUT/test_cuda.log") passed"
[[ $n_all -gt 0 && $n_ran -eq $n_all && $n_lines -eq $n_all ]] || note_fail "test_cuda's parts ran $n_ran distinct tests ($n_lines results) of $n_all"

if [[ "${DEVICE_CHECK_BENCH:-1}" != 0 ]]; then
    step "bench: Qwen3-0.6B training step"
    build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 5 2>&1 | tee "$OUT/bench_step.txt" || note_fail "bench step"
    if [[ "${DEVICE_CHECK_VARIANTS:-0}" != 0 ]]; then
        echo "--- the same with P materialised (AVERIS_ATTN=naive, the default before cuDNN)" | tee -a "$OUT/bench_step.txt"
        AVERIS_ATTN=naive build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 --recipes bf16,nvfp4,averis 2>&1 \
            | tail -6 | tee -a "$OUT/bench_step.txt" || note_fail "bench step (naive)"
        echo "--- the same with attention through cuda/flash.cu (AVERIS_ATTN=flash)" | tee -a "$OUT/bench_step.txt"
        AVERIS_ATTN=flash build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 --recipes bf16,nvfp4,averis 2>&1 \
            | tail -6 | tee -a "$OUT/bench_step.txt" || note_fail "bench step (flash)"
        echo "--- the same with fp32 activations between kernels (AVERIS_ACT=fp32)" | tee -a "$OUT/bench_step.txt"
        AVERIS_ACT=fp32 build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 --recipes bf16,nvfp4,averis 2>&1 \
            | tail -6 | tee -a "$OUT/bench_step.txt" || note_fail "bench step (fp32 activations)"
        echo "--- the same with the fewer-pass quantization off (AVERIS_FUSED_QUANT=0)" | tee -a "$OUT/bench_step.txt"
        AVERIS_FUSED_QUANT=0 build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 --recipes nvfp4,averis 2>&1 \
            | tail -5 | tee -a "$OUT/bench_step.txt" || note_fail "bench step (fused quantization off)"
    fi
    step "bench: a ~114M shape (bench/configs/qwen3-114m.json), 16 x 1024 tokens"
    build/bench_cuda step --config bench/configs/qwen3-114m.json --batch 16 --seq 1024 --steps 5 2>&1 | tee "$OUT/bench_step_114m.txt" \
        || note_fail "bench step 114m"
    step "profile: where the averis step's device time goes (AVERIS_CUDA_PROFILE=1)"
    AVERIS_CUDA_PROFILE=1 build/bench_cuda step --config qwen3-0.6b --batch 8 --seq 1024 --steps 3 --recipes bf16,averis 2>&1 \
        | tee "$OUT/profile_step.txt" >/dev/null || note_fail "profile step"
    step "bench: quantize kernels"
    build/bench_cuda quant 2>&1 | tee "$OUT/bench_quant.txt" || note_fail "bench quant"
    step "bench: an output gradient to both of its operands, two calls vs one (bench_cuda fused)"
    build/bench_cuda fused 2>&1 | tee "$OUT/bench_fused.txt" || note_fail "bench fused"
    step "bench: the kernel lab's quantize versions"
    build/quant_lab bench 2>&1 | tee "$OUT/bench_quant_lab.txt" || note_fail "quant_lab bench"
fi
echo
echo "device_check: $fail failure(s)"
exit $((fail > 0))
