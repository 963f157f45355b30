#!/usr/bin/env bash
# get_data.sh [OUT] — the default corpus (../shared/DATA.md): Jane Austen's six
# novels (r-cran-janeaustenr), Moby Dick (r-cran-tokenizers) and the King
# James Bible (bible-kjv), fetched as Debian packages with `apt-get download`,
# unpacked with dpkg-deb (no install), their text extracted by `averis
# prepare` into a BPE tokenizer and llm.c shards under OUT (default
# data/default). Idempotent: skips what is already there and verified.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/default}
CACHE=${AVERIS_CACHE:-data/cache}
BIN=${AVERIS_BIN:-build/averis}
VOCAB=${AVERIS_VOCAB:-4096}
STAMP="v1 vocab=$VOCAB"
if [[ -f $OUT/.stamp && "$(cat "$OUT/.stamp")" == "$STAMP" && -f $OUT/train_000000.bin && -f $OUT/val_000000.bin && -f $OUT/tokenizer.bpe ]]; then
    echo "data: $OUT is ready"
    exit 0
fi
[[ -x $BIN ]] || { echo "data: $BIN is missing; run 'make' first" >&2; exit 1; }
mkdir -p "$CACHE/debs" "$CACHE/root"
SUDO=""
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
updated=0
for pkg in r-cran-janeaustenr r-cran-tokenizers bible-kjv bible-kjv-text; do
    if ! compgen -G "$CACHE/debs/${pkg}_*.deb" >/dev/null; then
        echo "data: fetching $pkg"
        if ! (cd "$CACHE/debs" && apt-get download "$pkg" >/dev/null 2>&1); then
            if [[ $updated -eq 0 ]]; then $SUDO apt-get update -qq; updated=1; fi
            (cd "$CACHE/debs" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "data: cannot download $pkg" >&2; exit 1; }
        fi
    fi
done
for deb in "$CACHE"/debs/*.deb; do dpkg-deb -x "$deb" "$CACHE/root"; done
RLIB=$CACHE/root/usr/lib/R/site-library
AUSTEN=$RLIB/janeaustenr/data/Rdata.rdb
MOBY=$RLIB/tokenizers/data/Rdata.rdb
for f in "$AUSTEN" "$MOBY" "$CACHE/root/usr/lib/bible.data"; do
    [[ -s $f ]] || { echo "data: $f is missing after unpacking" >&2; exit 1; }
done
KJV=$CACHE/kjv.txt
if [[ ! -s $KJV ]]; then
    "$CACHE/root/usr/bin/bible" -p "$CACHE/root/usr/lib" gen1:1-rev22:21 >"$KJV.tmp"
    mv "$KJV.tmp" "$KJV"
fi
size=$(wc -c <"$KJV")
[[ $size -gt 4000000 ]] || { echo "data: $KJV has only $size bytes (want ~4.3 MB)" >&2; exit 1; }
mkdir -p "$OUT"
"$BIN" prepare --out "$OUT" --vocab "$VOCAB" "$AUSTEN" "$MOBY" "$KJV"
echo "$STAMP" >"$OUT/.stamp"
