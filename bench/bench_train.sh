#!/usr/bin/env bash
# bench_train.sh [THREADS...] — tokens/s of one training step of the `tiny`
# and `small` presets: averis (fp32, bf16, and the demo's FP4 recipes with
# their cost relative to bf16) against PyTorch eager on the CPU (transformers'
# Qwen3ForCausalLM, bench/torch_cpu_train.py) with the same config, batch and
# thread count, measured in one run. The peer needs torch and transformers;
# without them only averis is measured. Medians over steps after warm-up.
# AVERIS_IMPL=avx2 measures the quantize kernels of an AVX2-only host.
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
RECIPES="fp32 bf16 nvfp4 nvfp4-rht averis averis-rht"
echo "date $(date +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $("$BIN" features | grep gemm)," \
    "quantize kernels $("$BIN" features | awk '$1 == "kernels" { print $2 }')${AVERIS_IMPL:+ (AVERIS_IMPL=$AVERIS_IMPL)}, load $(cut -d' ' -f1 /proc/loadavg)"
echo "tokens/s (median over steps after warm-up); x = bf16 tokens/s ÷ the recipe's (the FP4 step's cost, target ≤ 1.3)"
printf '%-7s %-7s %3s |' preset BxT thr
for r in $RECIPES; do printf ' %10s' "$r"; done
printf ' | %9s | %s\n' torch "fp32/torch"
for spec in "tiny 8 128 10" "small 4 256 6"; do
    read -r preset B T steps <<<"$spec"
    for th in $THREADS; do
        declare -A tps=()
        for r in $RECIPES; do
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
        printf '%-7s %-7s %3s |' "$preset" "${B}x$T" "$th"
        for r in $RECIPES; do
            case $r in
            fp32 | bf16) printf ' %10.0f' "${tps[$r]}" ;;
            *) printf ' %4.0f %5s' "${tps[$r]}" "$(awk -v a="${tps[bf16]}" -v b="${tps[$r]}" 'BEGIN { printf "%.2fx", a / b }')" ;;
            esac
        done
        printf ' | %9s | %s\n' "$torch_tps" "$ratio"
    done
done
