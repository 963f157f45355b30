#!/usr/bin/env bash
# build_corpus.sh OUT_DIR [MAX_MB] — a training corpus from the source text
# a Python install carries (the machine needs no network): every *.py, *.rst,
# *.txt and *.md of python3's standard library and site-packages (and the
# whole virtual environment when python3 runs in one), one document per
# file, through `averis prepare`:
#   OUT_DIR/tokenizer.bpe, OUT_DIR/train_000000.bin, OUT_DIR/val_000000.bin
#   OUT_DIR/files.txt (the documents, in order), OUT_DIR/prepare.log, OUT_DIR/.stamp
# Validation: whole documents, ~1% of them, chosen by a hash of the path
# (deterministic). Files of under 256 bytes or over 1 MB (data tables,
# generated code) are left out; files are taken in sorted path order (roots,
# then directories and names) until MAX_MB (default 300) megabytes, then
# written in the order of a hash of their path (ORDER=hash, the default:
# every stretch of training tokens mixes packages) or as found (ORDER=sorted,
# the order of the 2026-12-06 sweep: the loader reads one package after
# another, so the training loss follows the domain). The BPE (vocabulary $VOCAB, default 16384)
# trains on a $BPE_SAMPLE_MB (default 24) MB sample. Idempotent: a finished
# OUT_DIR with the same settings is kept.
# Environment: AVERIS_BIN (build/averis), PYTHON (python3), VOCAB, BPE_SAMPLE_MB,
# VAL_DOCS (0.01), ORDER (hash), THREADS (all CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: build_corpus.sh OUT_DIR [MAX_MB]}
MAX_MB=${2:-300}
BIN=${AVERIS_BIN:-build/averis}
PY=${PYTHON:-python3}
VOCAB=${VOCAB:-16384}
BPE_SAMPLE_MB=${BPE_SAMPLE_MB:-24}
VAL_DOCS=${VAL_DOCS:-0.01}
ORDER=${ORDER:-hash}
[[ $ORDER == hash || $ORDER == sorted ]] || { echo "corpus: ORDER must be hash or sorted, not '$ORDER'" >&2; exit 2; }
STAMP="v1 max_mb=$MAX_MB vocab=$VOCAB sample=$BPE_SAMPLE_MB val_docs=$VAL_DOCS order=$ORDER"
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
"$PY" - "$MAX_MB" "$ORDER" >"$OUT_DIR/files.tmp" <<'PY'
import hashlib, os, site, sys, sysconfig
max_bytes = float(sys.argv[1]) * 1e6
order = sys.argv[2]
out = []
paths = sysconfig.get_paths()
roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
try:
    roots.update(site.getsitepackages())
except AttributeError:
    pass
if sys.prefix != sys.base_prefix:  # a virtual environment: all of it
    roots.add(sys.prefix)
roots = sorted(os.path.realpath(r) for r in roots if os.path.isdir(r))
roots = [r for r in roots if not any(r != q and r.startswith(q + os.sep) for q in roots)]
# walk in sorted order (directories and names), stop at the cap: deterministic and quick at toy scale
seen, total, nfiles = set(), 0, 0
for r in roots:
    for d, dirs, names in os.walk(r, followlinks=False):
        dirs.sort()
        for n in sorted(names):
            if not n.endswith((".py", ".rst", ".txt", ".md")):
                continue
            p = os.path.join(d, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen or not (256 <= st.st_size <= 1 << 20) or "\n" in p or not os.path.isfile(p):
                continue
            if total + st.st_size > max_bytes:
                break
            seen.add(key)
            total += st.st_size
            nfiles += 1
            out.append(p)
        if total >= max_bytes * 0.999:
            break
    if total >= max_bytes * 0.999:
        break
if order == "hash":  # the documents mixed (packages and the standard library interleaved), deterministically
    out.sort(key=lambda p: hashlib.sha1(p.encode("utf-8", "surrogateescape")).digest())
print("\n".join(out))
print(f"corpus: {nfiles} files, {total / 1e6:.1f} MB from {', '.join(roots)}, {order} order", file=sys.stderr)
PY
mv "$OUT_DIR/files.tmp" "$OUT_DIR/files.txt"
echo "corpus: $(wc -l <"$OUT_DIR/files.txt") files listed in ${SECONDS} s"
"$BIN" prepare --out "$OUT_DIR" --files-from "$OUT_DIR/files.txt" --vocab "$VOCAB" --val-docs "$VAL_DOCS" \
    --bpe-sample-mb "$BPE_SAMPLE_MB" ${THREADS:+--threads "$THREADS"} 2>&1 | tee "$OUT_DIR/prepare.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "corpus: averis prepare failed (see $OUT_DIR/prepare.log)" >&2; exit 1; }
echo "$STAMP" >"$OUT_DIR/.stamp"
echo "corpus: $OUT_DIR done in ${SECONDS} s"
