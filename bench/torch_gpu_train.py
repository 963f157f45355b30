#!/usr/bin/env python3
"""The peer for bench_cuda step: the same Qwen3 shape trained in PyTorch on
the same GPU (transformers' Qwen3ForCausalLM, fp32 master weights, BF16
autocast, SDPA attention, fused AdamW), eager and torch.compile; and the
FP4 peer: the same model with every decoder linear a W4A4G4 NVFP4
fake-quant (a simulation of the `nvfp4` recipe on Hopper, as one would
write it in PyTorch: 1x16 blocks along K for X and dY, 16x16 blocks for W,
E4M3 block scales under an fp32 tensor scale, round-to-nearest for X and
W, stochastic rounding for the gradients; the wgrad operands quantized
along the tokens), eager (fq-eager) and compiled (fq-compile).

`compile` compiles the whole model. `fq-compile` compiles each decoder
layer (regional compilation: one graph, reused by every layer), because the
whole fake-quant model's graph did not finish compiling in 200 s on an H100
(2026-12-06); `fq-compile-model` compiles the whole model anyway. The time
of the warm-up steps (compilation included) is printed apart; inductor's
disk cache (TORCHINDUCTOR_CACHE_DIR) shortens it in a later run on the same
machine. scripts/device_targets.sh runs this beside bench_cuda step.

    python3 bench/torch_gpu_train.py [--config qwen3-0.6b|qwen3-114m|tiny] [--batch 8] [--seq 1024]
                                     [--steps 10] [--modes eager,compile,fq-eager,fq-compile,fq-compile-model]

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
    # bench/configs/qwen3-114m.json
    "qwen3-114m": dict(vocab_size=50304, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=4, head_dim=64),
}

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
MIDS = (E2M1[1:] + E2M1[:-1]) / 2


def fq(x, sr=False):
    """NVFP4 quantize-dequantize of x (rows of the last dim in blocks of 16)."""
    shape, dt = x.shape, x.dtype
    x = x.float().reshape(-1, 16)
    g = x.abs().amax().clamp_min(1e-30) / (6.0 * 448.0)            # fp32 tensor scale (decode)
    bs = (x.abs().amax(-1, keepdim=True) / 6.0 / g).clamp(max=448.0)
    bs = bs.to(torch.float8_e4m3fn).float() * g                      # E4M3 block scale
    y = x / torch.where(bs > 0, bs, torch.ones_like(bs))
    a = y.abs().clamp(max=6.0)
    grid, mids = E2M1.to(x.device), MIDS.to(x.device)
    if sr:
        lo = grid[(torch.bucketize(a, grid, right=True) - 1).clamp(0, 7)]
        hi = grid[torch.bucketize(a, grid, right=False).clamp(0, 7)]
        p = torch.where(hi > lo, (a - lo) / (hi - lo), torch.zeros_like(a))
        q = torch.where(torch.rand_like(a) < p, hi, lo)
    else:
        q = grid[torch.bucketize(a, mids)]
    return (torch.sign(y) * q * bs).reshape(shape).to(dt)


def fq_w(w):
    """16x16 blocks of a weight [n, m]."""
    n, m = w.shape
    b = w.reshape(n // 16, 16, m // 16, 16).permute(0, 2, 1, 3).reshape(-1, 256)
    x = b.float()
    g = x.abs().amax().clamp_min(1e-30) / (6.0 * 448.0)
    bs = (x.abs().amax(-1, keepdim=True) / 6.0 / g).clamp(max=448.0).to(torch.float8_e4m3fn).float() * g
    y = x / torch.where(bs > 0, bs, torch.ones_like(bs))
    q = torch.sign(y) * E2M1.to(x.device)[torch.bucketize(y.abs().clamp(max=6.0), MIDS.to(x.device))] * bs
    return q.reshape(n // 16, m // 16, 16, 16).permute(0, 2, 1, 3).reshape(n, m).to(w.dtype)


class FQLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        x2 = x.reshape(-1, x.shape[-1])
        wq = fq_w(w)
        ctx.save_for_backward(x2, wq)
        ctx.xshape = x.shape
        return (fq(x2) @ wq.t()).reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, wq = ctx.saved_tensors
        d2 = dy.reshape(-1, dy.shape[-1])
        dx = fq(d2, sr=True) @ fq(wq.t().contiguous()).t()          # dgrad: dY along N, W along N
        dw = fq(d2.t().contiguous(), sr=True) @ fq(x2.t().contiguous()).t()  # wgrad: along the tokens
        return dx.reshape(ctx.xshape), dw


class FQLinear(torch.nn.Linear):
    def forward(self, x):
        # BF16 operands as autocast would give nn.Linear; the fake-quant runs outside autocast
        with torch.autocast("cuda", enabled=False):
            return FQLinearFn.apply(x.to(torch.bfloat16), self.weight.to(torch.bfloat16))


def to_fake_quant(model):
    """every nn.Linear of the decoder layers (not the LM head) → FQLinear, same weights"""
    for layer in model.model.layers:
        for name, mod in list(layer.named_modules()):
            for cn, child in list(mod.named_children()):
                if type(child) is torch.nn.Linear:
                    f = FQLinear(child.in_features, child.out_features, bias=False, device=child.weight.device)
                    f.weight = child.weight
                    setattr(mod, cn, f)
    return model


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
        if mode.startswith("fq-"):
            to_fake_quant(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        fwd = model
        if mode == "fq-compile":
            for layer in model.model.layers:
                layer.compile()
        elif "compile" in mode:  # compile, fq-compile-model: the whole model
            fwd = torch.compile(model)
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        t_first = time.perf_counter()
        for _ in range(3):  # warm-up (compilation)
            step()
        torch.cuda.synchronize()
        t_first = time.perf_counter() - t_first
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
        print(f"{mode:<12} {sec * 1e3:10.1f} {n / sec:12.0f} {100 * flops_tok * n / sec / 989e12:7.1f}% {loss.item():10.4f}"
              f"   (warm-up incl. compilation {t_first:.0f} s)", flush=True)
        del model, opt, fwd
        torch.cuda.empty_cache()
    print(f"(params {nparams / 1e6:.1f}M; MFU against 989 TFLOP/s)")


if __name__ == "__main__":
    main()
