#!/usr/bin/env bash
# bench_train.sh [THREADS...] — tokens/s of one training step of the `tiny`
# and `small` presets: averis (fp32 and bf16 recipes, and nvfp4/averis for
# the FP4 overhead) against PyTorch eager on the CPU (transformers'
# Qwen3ForCausalLM, bench/torch_cpu_train.py) with the same config, batch and
# thread count, measured in one run. The peer needs torch and transformers;
# without them only averis is measured. Medians over steps after warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${*:-2}
BIN=${AVERIS_BIN:-build/averis}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# any text will do for speed: the repository's own files
"$BIN" prepare --out "$TMP/data" --vocab 4096 $(git ls-files '*.c' '*.h' '*.md' '*.py' '*.sh' 2>/dev/null || ls src/*.c) >/dev/null 2>&1
# OpenBLAS 0.3.21 does not know CPUs newer than Cooper Lake and falls back to
# its slowest (Prescott) kernels on them; pick the AVX-512 family instead.
if "$BIN" features | grep -q 'Prescott' && grep -q avx512f /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-COOPERLAKE}
fi
median_tps() { awk -F, 'NR > 3 { print $7 }' "$1" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
have_torch=0
python3 -c 'import torch, transformers' 2>/dev/null && have_torch=1
echo "date $(date +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $("$BIN" features | grep gemm)"
printf '%-7s %-7s %3s | %9s %9s %9s %9s | %9s | %s\n' preset BxT thr fp32 bf16 nvfp4 averis torch "fp32/torch"
for spec in "tiny 8 128 10" "small 4 256 6"; do
    read -r preset B T steps <<<"$spec"
    for th in $THREADS; do
        declare -A tps=()
        for r in fp32 bf16 nvfp4 averis; do
            out=$TMP/run_${preset}_${r}_$th
            OMP_NUM_THREADS=$th "$BIN" train --config "$preset" --recipe "$r" --data "$TMP/data" --out "$out" \
                --steps "$steps" --batch "$B" --seq "$T" --val-every 0 --quiet --threads "$th" >/dev/null
            tps[$r]=$(median_tps "$out/log.csv")
        done
        torch_tps="-"
        ratio="-"
        if [[ $have_torch == 1 ]]; then
            cfg=$(ls "$TMP"/run_${preset}_fp32_$th/ckpt_*/config.json | head -1)
            torch_tps=$(OMP_NUM_THREADS=$th python3 bench/torch_cpu_train.py "$cfg" "$B" "$T" "$th" "$steps" 2>/dev/null | awk '{ print $3 }')
            ratio=$(awk -v a="${tps[fp32]}" -v b="$torch_tps" 'BEGIN { printf "%.2fx", a / b }')
        fi
        printf '%-7s %-7s %3s | %9.0f %9.0f %9.0f %9.0f | %9s | %s\n' "$preset" "${B}x$T" "$th" "${tps[fp32]}" "${tps[bf16]}" \
            "${tps[nvfp4]}" "${tps[averis]}" "$torch_tps" "$ratio"
    done
done
