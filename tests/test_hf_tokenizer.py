#!/usr/bin/env python3
"""test_hf_tokenizer.py BIN — the tokenizer.json that `averis prepare` writes,
read by the Hugging Face `tokenizers` package, gives exactly the ids averis
gives, and decodes them back byte for byte (docs/huggingface.md):

  - the whole validation text of the default corpus (data/default, made by
    scripts/get_data.sh when missing) against the ids in val_000000.bin;
  - adversarial text through a tokenizer trained on it (emoji, CJK, invalid
    UTF-8, runs of thousands of bytes, tokens of 1024 bytes and more,
    whitespace only, control bytes, the literal "<|endoftext|>") and seeded
    random byte strings, against `averis tokenize`.

Text that is not UTF-8 cannot be a Python str, so `tokenizers` never sees it
as text. Such bytes are checked two ways: (a) as a str decoded with
errors="replace", which is what a Hugging Face user can feed, against averis
on the same replaced bytes; (b) exactly: mapped to GPT-2's byte alphabet and
fed to the same tokenizer.json minus its first pre-tokenizer (ByteLevel, the
mapping itself), decoded through the alphabet back to bytes.

Prints one line per failure and "N passed, N failed, N skipped" last; when
`tokenizers` cannot be imported, every check is skipped (exit 0), saying so.
"""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "averis"))
NCHECKS = 8  # the checks below, for the skip count
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"  FAIL {what}", flush=True)


def b2u():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = b2u()
U2B = {c: b for b, c in B2U.items()}


def averis_ids(tok_dir, data, tmp):
    path = os.path.join(tmp, "in.bin")
    open(path, "wb").write(data)
    out = subprocess.run([BIN, "tokenize", tok_dir, path], check=True, capture_output=True).stdout
    return [int(x) for x in out.split()]


def averis_bytes(tok_dir, ids, tmp):
    path = os.path.join(tmp, "ids.txt")
    open(path, "w").write(" ".join(map(str, ids)))
    return subprocess.run([BIN, "tokenize", "--decode", tok_dir, path], check=True, capture_output=True).stdout


class HF:
    """The tokenizer.json of DIR, as text and, minus ByteLevel, over the byte alphabet."""

    def __init__(self, d, Tokenizer):
        spec = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
        self.text = Tokenizer.from_str(json.dumps(spec))
        self.text.encode_special_tokens = True  # tokenizer_config's split_special_tokens
        pts = spec["pre_tokenizer"]["pretokenizers"]
        assert pts[0]["type"] == "ByteLevel", pts[0]
        spec["pre_tokenizer"]["pretokenizers"] = pts[1:]
        spec["decoder"] = None
        self.raw = Tokenizer.from_str(json.dumps(spec))
        self.raw.encode_special_tokens = True

    def ids_bytes(self, data):  # exact, any bytes
        return self.raw.encode("".join(B2U[b] for b in data), add_special_tokens=False).ids

    def bytes_of(self, ids):
        return bytes(U2B[c] for i in ids for c in self.raw.id_to_token(i))


def check_text(hf, tok_dir, data, tmp, what):
    """One input through both: ids equal, decodes equal to the input."""
    want = averis_ids(tok_dir, data, tmp)
    ok = hf.ids_bytes(data) == want and hf.bytes_of(want) == data and averis_bytes(tok_dir, want, tmp) == data
    try:
        s = data.decode("utf-8")
        ok = ok and hf.text.encode(s, add_special_tokens=False).ids == want and hf.text.decode(want) == s
        ok = ok and hf.text.encode(s).ids == [256] + want  # the post-processor: <|endoftext|> first, as prepare
    except UnicodeDecodeError:  # (a): what a str can carry, the replaced text
        s = data.decode("utf-8", errors="replace")
        ok = ok and hf.text.encode(s, add_special_tokens=False).ids == averis_ids(tok_dir, s.encode(), tmp)
    if not ok:
        print(f"  mismatch on {what}: {data[:60]!r}", flush=True)
    return ok


ADVERSARIAL = [
    b"", b" ", b"  ", b"\n", b"\n\n\n", b"   \t\n  \r\n \x0b\x0c ", b" " * 3000, b"\n" * 700,
    "😀".encode(), "😀🎉👍🏽 family: 👨‍👩‍👧‍👦".encode(), "日本語のテキスト、中文字符。한국어".encode(),
    "naïve café — “quotes” ‘single’ …".encode(), "e\u0301 combining, \u200b zero width, \u202e rtl".encode(),
    b"\xff\xfe\x80 invalid \xc3( utf-8 \xed\xa0\x80 surrogate \xf4\x90\x80\x80", b"\x00\x01\x7f control \x1b[0m",
    b"a" * 5000, b"ab" * 1500, b" a" * 1000, b"!" * 2000, b"1234567890" * 200, "日".encode() * 700,
    b"<|endoftext|>", b"text <|endoftext|>\n<|endoftext|> more", b"don't won't 'quoted' ''",
    b"x  y   z\t\tw \n v", b"end with spaces   ", b"   start with spaces", b"tab\tsep\tvalues\n1\t2\t3\n",
    b"http://example.org/a?b=c&d=e#f", b"C:\\path\\to\\file.txt", b"Mr. Smith's 2nd -- (test) [x] {y}",
]


def adversarial_corpus():
    parts = []
    for k in range(30):
        parts += [b"a" * 3000, b" " + b"b" * 2500, "😀🎉👍🏽".encode() * 20, "日本語のテキスト中文字符".encode() * 10,
                  b"\xff\xfe\x80\xc3(" * 10, b"   \n\n\t " * 5, b"12345678901234567890", b"!!!???...",
                  b"don't stop <|endoftext|> me now ", b"The quick brown fox jumps over the lazy dog. " * 3]
    return b"\n".join(parts)


def main():
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        print(f"SKIP the Hugging Face tokenizer checks: the `tokenizers` package is not installed ({e}); "
              "scripts/setup.sh installs it with pip")
        print(f"0 passed, 0 failed, {NCHECKS} skipped")
        return 0
    import tokenizers
    print(f"tokenizers {tokenizers.__version__}, {BIN}")
    with tempfile.TemporaryDirectory() as tmp:
        # 1. the default corpus: the whole validation text against prepare's val shard
        data = os.path.join(ROOT, "data", "default")
        if not os.path.exists(os.path.join(data, ".stamp")):
            env = dict(os.environ, AVERIS_BIN=BIN)
            r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "get_data.sh"), data], env=env,
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stdout[-2000:], r.stderr[-2000:])
        if not os.path.exists(os.path.join(data, "val_000000.bin")):
            check(False, "the default corpus: data/default/val_000000.bin is missing and scripts/get_data.sh failed")
            return report()
        if not os.path.exists(os.path.join(data, "tokenizer.json")):  # prepared before tokenizer.json existed
            subprocess.run([BIN, "tokenize", data, "--hf", data], check=True)
        hf = HF(data, Tokenizer)
        raw = open(os.path.join(data, "val_000000.bin"), "rb").read()
        n = struct.unpack("<256i", raw[:1024])[2]
        ids = list(struct.unpack(f"<{n}H", raw[1024:1024 + 2 * n]))
        docs, cur = [], None
        for t in ids:
            if t == 256:
                if cur is not None:
                    docs.append(cur)
                cur = []
            else:
                cur.append(t)
        docs.append(cur)
        ok_ids = ok_dec = True
        nbytes = 0
        for doc in docs:
            text = averis_bytes(data, doc, tmp)  # the held-out text, as prepare read it
            nbytes += len(text)
            s = text.decode("utf-8")
            enc = hf.text.encode(s)
            ok_ids &= enc.ids == [256] + doc  # as prepare writes a document: <|endoftext|>, then its text
            ok_dec &= hf.text.decode(doc) == s
        check(ok_ids and len(docs) >= 8 and nbytes > 400000, f"default validation text: {len(docs)} documents, "
              f"{nbytes} bytes, {n} ids equal to val_000000.bin")
        check(ok_dec, "default validation text decodes back byte for byte")
        check(all(check_text(hf, data, x, tmp, "default tokenizer") for x in ADVERSARIAL),
              "adversarial strings through the default corpus's tokenizer")
        # 2. a tokenizer trained on adversarial text: long tokens, emoji, CJK and invalid bytes merged
        adv = os.path.join(tmp, "adv")
        open(os.path.join(tmp, "adv.txt"), "wb").write(adversarial_corpus())
        r = subprocess.run([BIN, "prepare", "--out", adv, "--vocab", "1200", os.path.join(tmp, "adv.txt")],
                           capture_output=True, text=True)
        check(r.returncode == 0 and os.path.exists(os.path.join(adv, "tokenizer.json")), f"prepare adversarial: {r.stderr[-300:]}")
        if r.returncode:
            return report()
        hfa = HF(adv, Tokenizer)
        vocab = json.load(open(os.path.join(adv, "tokenizer.json"), encoding="utf-8"))["model"]["vocab"]
        long_ids = [i for t, i in vocab.items() if i != 256 and len(t) >= 1024]
        ok_long = bool(long_ids)
        for i in long_ids:  # tokens of 1 KB and more: the same bytes both ways
            ok_long &= hfa.bytes_of([i]) == averis_bytes(adv, [i], tmp) and len(hfa.bytes_of([i])) >= 1024
            ok_long &= hfa.text.decode([i]).encode() == averis_bytes(adv, [i], tmp)
        check(ok_long, f"tokens of 1024 bytes or more ({len(long_ids)}, the longest "
              f"{max((len(hfa.bytes_of([i])) for i in long_ids), default=0)} bytes) decode alike")
        multi = [t for t, i in vocab.items() if any(ord(c) > 0xFF for c in t) and len(t) > 3]
        check(len(multi) > 0, "the adversarial tokenizer merged bytes outside ASCII (emoji, CJK, invalid)")
        check(all(check_text(hfa, adv, x, tmp, "adversarial tokenizer") for x in ADVERSARIAL),
              "adversarial strings through the adversarial tokenizer")
        # 3. seeded random byte strings, both tokenizers
        rng = random.Random(23)
        alpha = list(b"  \n\t\r\x0b\x0cab'AZ09.,!-(<|>") + [0x80, 0xA0, 0xAD, 0xC3, 0xE6, 0xF0, 0xFF, 0x00, 0x7F]
        pieces = ["😀".encode(), "日本".encode(), "é".encode(), b"<|endoftext|>", b"a" * 600, b" " * 520]
        ok = True
        for k in range(150):
            parts = []
            for _ in range(rng.randint(1, 30)):
                r_ = rng.random()
                parts.append(rng.choice(pieces) if r_ < 0.1 else bytes([rng.choice(alpha)]) * rng.randint(1, 6))
            x = b"".join(parts)
            ok &= check_text(hf if k % 2 else hfa, data if k % 2 else adv, x, tmp, f"random string {k}")
        check(ok, "150 seeded random byte strings")
    return report()


def report():
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
