#!/usr/bin/env python3
"""make_tasks.py — zero-shot multiple-choice tasks from the held-out split of
a corpus that `averis prepare` made, for `averis eval --task` and, through the
YAML written beside the JSONL, lm-evaluation-harness (docs/huggingface.md).

    python3 scripts/make_tasks.py DATA_DIR OUT.jsonl [--kind prose|code]
                                  [--items N] [--seed S] [--name TASK]

DATA_DIR holds tokenizer.bpe and val_*.bin (prepare's held-out split: the
last --val-frac of every document, which the training split never saw). The
script decodes the validation tokens back to text (its own reader of the two
files: no other input, no dependency) and builds, deterministically (its own
splitmix64, so no Python version changes the output):

  prose (the default corpus): an anchor is a sentence end inside a paragraph
    (no blank line); context = the paragraph's text up to it (at most 48
    words, at least 12), the true continuation = the next 12 words, the other
    three = continuations at anchors of the same document at least 400 words
    away; choices start with the whitespace that follows the context.
  code: context = up to 16 lines of a held-out file before line j, the true
    continuation = "\\n" + line j (non-blank, ≥ 8 characters, trailing spaces
    removed), the other three = such lines of other held-out files.

Items are spread evenly over the anchors (every k-th), at most --items;
choices are shuffled, `label` is the true one's index. Writes OUT.jsonl (one
{"context", "choices", "label"} a line) and OUT.yaml: an lm-eval task
(dataset_path: json, data_files: OUT.jsonl as given, so run lm_eval from the
directory the path is relative to), output_type multiple_choice, acc and
acc_norm, target_delimiter "" (the choices carry their own whitespace).
"""
import argparse
import json
import os
import re
import struct
import sys

CTX_WORDS, MIN_CTX_WORDS, CONT_WORDS, FAR_WORDS = 48, 12, 12, 400
CTX_LINES, MIN_LINE = 16, 8


def fail(msg):
    print(f"make_tasks: {msg}", file=sys.stderr)
    sys.exit(1)


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & (2**64 - 1)

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        return z ^ (z >> 31)

    def below(self, n):  # uniform in [0, n), rejection sampling
        lim = (2**64 // n) * n
        while True:
            x = self.next()
            if x < lim:
                return x % n

    def shuffle(self, xs):
        for i in range(len(xs) - 1, 0, -1):
            j = self.below(i + 1)
            xs[i], xs[j] = xs[j], xs[i]


def load_tokens(path):
    """Token bytes from tokenizer.bpe (ids 0..255 bytes, 256 <|endoftext|>, 257+i merge i)."""
    words = open(path, "rb").read().split()
    if len(words) < 5 or words[0] != b"averis-bpe" or words[1] != b"1" or words[2] != b"vocab_size" or words[4] != b"merges":
        fail(f"{path}: not an averis-bpe 1 tokenizer")
    nmerges = int(words[5])
    toks = [bytes([i]) for i in range(256)] + [b"\n<|endoftext|>\n"]
    for i in range(nmerges):
        a, b = int(words[6 + 2 * i]), int(words[7 + 2 * i])
        toks.append(toks[a] + toks[b])
    return toks


def load_val_docs(data_dir):
    toks = load_tokens(os.path.join(data_dir, "tokenizer.bpe"))
    shards = sorted(f for f in os.listdir(data_dir) if "val" in f and f.endswith(".bin"))
    if not shards:
        fail(f"{data_dir}: no val*.bin shard (run averis prepare)")
    docs, cur = [], None
    for name in shards:
        raw = open(os.path.join(data_dir, name), "rb").read()
        head = struct.unpack("<256i", raw[:1024])
        if head[0] != 20240520:
            fail(f"{data_dir}/{name}: not an llm.c shard (magic {head[0]})")
        n = head[2]
        for t in struct.unpack(f"<{n}H", raw[1024 : 1024 + 2 * n]):
            if t == 256:  # every document starts with <|endoftext|>
                if cur is not None:
                    docs.append(b"".join(cur))
                cur = []
            else:
                if cur is None:
                    cur = []
                cur.append(toks[t])
    if cur is not None:
        docs.append(b"".join(cur))
    return [d.decode("utf-8", errors="replace") for d in docs]


SENT_END = re.compile(r"[.!?;:][\"')\]_]*$")
ABBREV = {"Mr.", "Mrs.", "Dr.", "St.", "Esq.", "Col.", "Capt.", "Messrs.", "Mme.", "Rev."}


def prose_anchors(docs):
    """(doc, context, continuation, word position) at sentence ends inside paragraphs."""
    out = []
    for d, text in enumerate(docs):
        ws = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        para_start = 0  # index of the paragraph's first word
        for i in range(1, len(ws)):
            gap = text[ws[i - 1][1] : ws[i][0]]
            if gap.count("\n") >= 2:
                para_start = i
                continue
            last = text[ws[i - 1][0] : ws[i - 1][1]]
            if not SENT_END.search(last) or last in ABBREV or i + CONT_WORDS > len(ws):
                continue
            first = max(para_start, i - CTX_WORDS)
            if i - first < MIN_CTX_WORDS:
                continue
            cont_end = ws[i + CONT_WORDS - 1][1]
            cont = text[ws[i - 1][1] : cont_end]
            if "\n\n" in cont.replace("\r", "") or re.search(r"\n[ \t]*\n", cont):
                continue  # the continuation stays in the paragraph
            out.append((d, text[ws[first][0] : ws[i - 1][1]], cont, i))
    return out


def prose_items(docs, nitems, rng):
    anchors = prose_anchors(docs)
    if len(anchors) < 8:
        fail(f"only {len(anchors)} sentence ends in the held-out text: too little for a task")
    by_doc = {}
    for k, a in enumerate(anchors):
        by_doc.setdefault(a[0], []).append(k)
    step = max(1, len(anchors) // nitems)
    items = []
    for k in range(0, len(anchors), step):
        if len(items) == nitems:
            break
        d, ctx, cont, pos = anchors[k]
        pool = [j for j in by_doc[d] if abs(anchors[j][3] - pos) >= FAR_WORDS]
        if len(pool) < 3:  # a short document: take other documents' too
            pool = [j for j in range(len(anchors)) if anchors[j][0] != d or abs(anchors[j][3] - pos) >= FAR_WORDS]
        picks = []
        while len(picks) < 3 and pool:
            j = pool.pop(rng.below(len(pool)))
            c = anchors[j][2]
            if c.strip() != cont.strip() and all(c.strip() != p.strip() for p in picks):
                picks.append(c)
        if len(picks) < 3:
            continue
        items.append((ctx, cont, picks))
    return items


def code_items(docs, nitems, rng):
    files = []
    for text in docs:
        lines = [l.rstrip() for l in text.split("\n")]
        files.append(lines)
    good = lambda l: len(l.strip()) >= MIN_LINE
    anchors = []  # (file, line index)
    for f, lines in enumerate(files):
        for j in range(1, len(lines)):
            if good(lines[j]) and "".join(lines[max(0, j - CTX_LINES) : j]).strip():
                anchors.append((f, j))
    pool_lines = [(f, l) for f, lines in enumerate(files) for l in lines if good(l)]
    if len({f for f, _ in anchors}) < 2 or len(anchors) < 8:
        fail("the code task needs held-out text from at least two files")
    step = max(1, len(anchors) // nitems)
    items = []
    for k in range(0, len(anchors), step):
        if len(items) == nitems:
            break
        f, j = anchors[k]
        lines = files[f]
        ctx = "\n".join(lines[max(0, j - CTX_LINES) : j])
        ctx = ctx[len(ctx) - len(ctx.lstrip("\n")) :]  # no leading blank lines
        true = lines[j]
        picks, tries = [], 0
        while len(picks) < 3 and tries < 200:
            tries += 1
            g, l = pool_lines[rng.below(len(pool_lines))]
            if g != f and l.strip() != true.strip() and all(l.strip() != p.strip() for p in picks):
                picks.append(l)
        if len(picks) < 3 or not ctx.strip():
            continue
        items.append((ctx, "\n" + true, ["\n" + p for p in picks]))
    return items


YAML = """# lm-evaluation-harness task for {jsonl} (written by scripts/make_tasks.py;
# docs/huggingface.md). data_files is relative to the directory lm_eval runs in.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_atomic(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("out", help="the task file, *.jsonl (the YAML goes beside it)")
    ap.add_argument("--kind", choices=["prose", "code"], default="prose")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", help="lm-eval task name (default: averis_ + the file's stem)")
    a = ap.parse_args()
    if not a.out.endswith(".jsonl"):
        fail(f"{a.out}: the task file must end in .jsonl")
    if a.items < 1:
        fail(f"--items {a.items}: must be at least 1")
    docs = load_val_docs(a.data_dir)
    rng = SplitMix64(a.seed)
    items = (prose_items if a.kind == "prose" else code_items)(docs, a.items, rng)
    lines = []
    for ctx, true, others in items:
        choices = [true] + others
        order = list(range(4))
        rng.shuffle(order)
        lines.append(json.dumps({"context": ctx, "choices": [choices[o] for o in order], "label": order.index(0)},
                                ensure_ascii=False))
    write_atomic(a.out, "\n".join(lines) + "\n")
    stem = os.path.splitext(os.path.basename(a.out))[0]
    name = a.name or "averis_" + re.sub(r"\W", "_", stem)
    write_atomic(a.out[: -len(".jsonl")] + ".yaml", YAML.format(jsonl=a.out, name=name))
    print(f"{a.out}: {len(items)} items ({a.kind}, from {len(docs)} held-out documents), task {name}")


if __name__ == "__main__":
    main()
