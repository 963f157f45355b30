#!/usr/bin/env python3
"""The peer for bench_cuda step: the same Qwen3 shape trained in PyTorch on
the same GPU (transformers' Qwen3ForCausalLM, fp32 master weights, BF16
autocast, SDPA attention, fused AdamW), eager and torch.compile.

    python3 bench/torch_gpu_train.py [--config qwen3-0.6b] [--batch 8] [--seq 1024]
                                     [--steps 10] [--modes eager,compile]

Prints ms/step, tokens/s and MFU with bench_cuda's flop count
(6·params + 12·L·H·Dh·T per token, against 989 TFLOP/s).
"""
import argparse
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

PRESETS = {
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="qwen3-0.6b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="eager,compile")
    a = ap.parse_args()
    p = PRESETS[a.config]
    cfg = Qwen3Config(**p, max_position_embeddings=max(a.seq, 2048), rope_theta=1e6, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, attn_implementation="sdpa", use_cache=False)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    nparams = None
    print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print(f"training step, {a.config}, {a.batch} x {a.seq} tokens, {a.steps} timed steps, BF16 autocast")
    print(f"{'mode':<12} {'ms/step':>10} {'tokens/s':>12} {'MFU':>8} {'loss':>10}")
    for mode in a.modes.split(","):
        model = Qwen3ForCausalLM(cfg).to(dev)
        nparams = sum(t.numel() for t in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        fwd = torch.compile(model) if mode == "compile" else model
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        for _ in range(3):  # warm-up (compilation)
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            loss = step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        times.sort()
        sec = times[len(times) // 2]
        n = a.batch * a.seq
        flops_tok = 6.0 * nparams + 12.0 * p["num_hidden_layers"] * p["num_attention_heads"] * p["head_dim"] * a.seq
        print(f"{mode:<12} {sec * 1e3:10.1f} {n / sec:12.0f} {100 * flops_tok * n / sec / 989e12:7.1f}% {loss.item():10.4f}",
              flush=True)
        del model, opt, fwd
        torch.cuda.empty_cache()
    print(f"(params {nparams / 1e6:.1f}M; MFU against 989 TFLOP/s)")


if __name__ == "__main__":
    main()
