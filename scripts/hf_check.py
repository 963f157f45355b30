#!/usr/bin/env python3
"""hf_check.py CKPT BIN [--device cpu|cuda] [--tokens N] — an averis checkpoint
directory through transformers alone (scripts/device_hf.sh runs it; needs
torch and transformers):

  1. AutoTokenizer.from_pretrained(CKPT) and AutoModelForCausalLM.from_pretrained(CKPT)
     load from the directory, nothing else;
  2. the tokenizer gives `averis tokenize --bos` ids on a few texts, and
     decodes them back;
  3. greedy generate (float32) from each prompt equals `averis sample
     --temperature 0 --recipe fp32` token for token (BIN is the averis binary).

Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
"""
import argparse
import os
import subprocess
import sys
import tempfile

PROMPTS = ["It is a truth universally acknowledged", "And God said,", "Call me Ishmael. Some years ago", "\n"]
TEXTS = ["Hello, world!  It's 2026.\n\n  Yes.", "日本語のテキスト 😀🎉", "   \n\t ", "x" * 1500, "<|endoftext|> is text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("bin")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        passed += bool(ok)
        failed += not ok

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {a.device}")
    tok = AutoTokenizer.from_pretrained(a.ckpt)
    model = AutoModelForCausalLM.from_pretrained(a.ckpt, dtype=torch.float32).to(a.device).eval()
    check(tok.bos_token_id == 256 and tok.eos_token_id == 256, f"AutoTokenizer {type(tok).__name__}: bos = eos = 256")
    check(type(model).__name__ == "Qwen3ForCausalLM", f"AutoModelForCausalLM: {type(model).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        for t in TEXTS:
            path = os.path.join(tmp, "t.txt")
            open(path, "wb").write(t.encode())
            want = [int(x) for x in subprocess.run([a.bin, "tokenize", "--bos", a.ckpt, path], check=True,
                                                   capture_output=True).stdout.split()]
            got = tok(t)["input_ids"]
            check(got == want and tok.decode(got[1:]) == t, f"tokenizer ids and decode of {t[:24]!r}")
        for p in PROMPTS:
            ids_path = os.path.join(tmp, "ids.txt")
            subprocess.run([a.bin, "sample", a.ckpt, "--prompt", p, "--tokens", str(a.tokens), "--temperature", "0",
                            "--recipe", "fp32", "--ids", ids_path], check=True, capture_output=True)
            ours = [int(x) for x in open(ids_path).read().split()]
            inp = torch.tensor([tok(p)["input_ids"]], device=a.device)
            check(inp[0].tolist() == ours[: inp.shape[1]], f"prompt {p!r}: the same {inp.shape[1]} prompt ids")
            gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=a.tokens, min_new_tokens=0,
                                               eos_token_id=None, pad_token_id=256, bos_token_id=256)
            with torch.no_grad():
                out = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc)[0].tolist()
                # and a plain argmax loop, the definition of greedy
                seq = inp[0].tolist()
                for _ in range(a.tokens):
                    logits = model(torch.tensor([seq], device=a.device)).logits[0, -1]
                    seq.append(int(torch.argmax(logits)))
            first = next((i for i, (x, y) in enumerate(zip(out, ours)) if x != y), None)
            check(out == ours, f"prompt {p!r}: generate == averis sample, {a.tokens} tokens"
                  + ("" if first is None else f" (first difference at {first}: {out[first:first + 4]} vs {ours[first:first + 4]})"))
            check(seq == out, f"prompt {p!r}: generate == the argmax loop")
            print(f"     {tok.decode(out[1:])!r}"[:160])
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
