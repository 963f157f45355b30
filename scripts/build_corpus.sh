#!/usr/bin/env bash
# build_corpus.sh OUT_DIR [MAX_MB] — a training corpus from the source text
# a Python install carries (the machine needs no network): every *.py, *.rst,
# *.txt and *.md under python3's sys.prefix, sys.base_prefix and its
# site-packages, one document per file, through `averis prepare`:
#   OUT_DIR/tokenizer.bpe, OUT_DIR/train_000000.bin, OUT_DIR/val_000000.bin
#   OUT_DIR/files.txt (the documents, in order), OUT_DIR/prepare.log, OUT_DIR/.stamp
# Validation: whole documents, ~1% of them, chosen by a hash of the path
# (deterministic). Files of under 256 bytes or over 1 MB (data tables,
# generated code) are left out; files are taken in sorted path order until
# MAX_MB (default 300) megabytes. The BPE (vocabulary $VOCAB, default 16384)
# trains on a $BPE_SAMPLE_MB (default 24) MB sample. Idempotent: a finished
# OUT_DIR with the same settings is kept.
# Environment: AVERIS_BIN (build/averis), PYTHON (python3), VOCAB, BPE_SAMPLE_MB,
# VAL_DOCS (0.01), THREADS (all CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: build_corpus.sh OUT_DIR [MAX_MB]}
MAX_MB=${2:-300}
BIN=${AVERIS_BIN:-build/averis}
PY=${PYTHON:-python3}
VOCAB=${VOCAB:-16384}
BPE_SAMPLE_MB=${BPE_SAMPLE_MB:-24}
VAL_DOCS=${VAL_DOCS:-0.01}
STAMP="v1 max_mb=$MAX_MB vocab=$VOCAB sample=$BPE_SAMPLE_MB val_docs=$VAL_DOCS"
if [[ -f $OUT_DIR/.stamp && "$(cat "$OUT_DIR/.stamp")" == "$STAMP" && -f $OUT_DIR/train_000000.bin \
      && -f $OUT_DIR/val_000000.bin && -f $OUT_DIR/tokenizer.bpe ]]; then
    echo "corpus: $OUT_DIR is ready ($STAMP)"
    exit 0
fi
[[ -x $BIN ]] || { echo "corpus: $BIN is missing; run 'make' first" >&2; exit 1; }
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/.stamp"
SECONDS=0
# the file list: sorted, deduplicated (site-packages often lies under the prefix), size-filtered, capped
"$PY" - "$MAX_MB" >"$OUT_DIR/files.tmp" <<'PY'
import os, site, sys, sysconfig
max_bytes = float(sys.argv[1]) * 1e6
roots = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
try:
    roots.update(site.getsitepackages())
except AttributeError:
    pass
seen, files = set(), []
for r in sorted(roots):
    for d, dirs, names in os.walk(r, followlinks=False):
        dirs.sort()
        for n in names:
            if not n.endswith((".py", ".rst", ".txt", ".md")):
                continue
            p = os.path.join(d, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen or not (256 <= st.st_size <= 1 << 20) or not os.path.isfile(p):
                continue
            seen.add(key)
            files.append((os.path.realpath(p), st.st_size))
files.sort()
total = 0
for p, n in files:
    if total + n > max_bytes:
        break
    if "\n" in p:
        continue
    total += n
    print(p)
print(f"corpus: {len(files)} candidate files; taking {total / 1e6:.1f} MB", file=sys.stderr)
PY
mv "$OUT_DIR/files.tmp" "$OUT_DIR/files.txt"
echo "corpus: $(wc -l <"$OUT_DIR/files.txt") files listed in ${SECONDS} s"
"$BIN" prepare --out "$OUT_DIR" --files-from "$OUT_DIR/files.txt" --vocab "$VOCAB" --val-docs "$VAL_DOCS" \
    --bpe-sample-mb "$BPE_SAMPLE_MB" ${THREADS:+--threads "$THREADS"} 2>&1 | tee "$OUT_DIR/prepare.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "corpus: averis prepare failed (see $OUT_DIR/prepare.log)" >&2; exit 1; }
echo "$STAMP" >"$OUT_DIR/.stamp"
echo "corpus: $OUT_DIR done in ${SECONDS} s"
