#!/usr/bin/env python3
"""bench_linear.py — training-step speed of a transformers Qwen3 whose block
linears are averis.torch.Linear, against the same model with nn.Linear, in
one run (both eager PyTorch, fp32 parameters, AdamW), printed as tokens/s and
their ratio.

    python3 python/bench_linear.py                      # CUDA if present, else CPU
    python3 python/bench_linear.py --recipe averis-rht --hidden 1024 --layers 8

The config is built here (no download). Steps alternate between the two
models after a warm-up, so drift of the machine hits both alike.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import List

# the installed package, not the sources beside this script (no extension there)
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402
import transformers  # noqa: E402

import averis  # noqa: E402
import averis.torch as at  # noqa: E402


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    """A Qwen3ForCausalLM of the requested size with eager attention."""
    cfg = transformers.Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden,
                                   intermediate_size=args.intermediate or 3 * args.hidden,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=max(1, args.heads // 2), head_dim=args.hidden // args.heads,
                                   max_position_embeddings=args.seq, tie_word_embeddings=False)
    model = transformers.Qwen3ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    return model


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor) -> float:
    """One training step; returns its wall time in seconds (device synchronised)."""
    if tokens.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = model(input_ids=tokens, labels=tokens).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if tokens.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--recipe", default="averis")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=0, help="default 3 x hidden")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    torch.manual_seed(0)
    base = make_model(args).to(args.device)
    quant = at.convert(copy.deepcopy(base), recipe=args.recipe, skip=["lm_head"])
    models = {"nn.Linear": base, f"averis {args.recipe}": quant}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    for _ in range(args.warmup):
        for k, m in models.items():
            step(m, opts[k], tokens)
    times: dict = {k: [] for k in models}
    for _ in range(args.steps):
        for k, m in models.items():
            times[k].append(step(m, opts[k], tokens))

    ntok = args.batch * args.seq
    nparams = sum(p.numel() for p in base.parameters())
    print(f"device {args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
          f"averis CUDA build: {averis.cuda_compiled()}, torch {torch.__version__}")
    print(f"Qwen3 {nparams / 1e6:.1f}M params: hidden {args.hidden}, {args.layers} layers, batch {args.batch} x "
          f"seq {args.seq}, {args.steps} steps after {args.warmup} warm-up")
    rates: List[float] = []
    for k, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        rates.append(ntok / med)
        print(f"  {k:<22} {ntok / med:12.0f} tokens/s  (median step {med * 1e3:8.2f} ms)")
    print(f"ratio averis / nn.Linear: {rates[1] / rates[0]:.3f}")


if __name__ == "__main__":
    main()
