#!/usr/bin/env python3
"""torch_cpu_train.py CONFIG.json B T THREADS STEPS — the peer for
bench/bench_train.sh: tokens/s of one fp32 training step (forward, cross-
entropy, backward, clip, AdamW) of transformers' Qwen3ForCausalLM with the
same config, batch and thread count, PyTorch eager on the CPU. Prints
"torch tokens_per_s X" (median over the steps after two warm-up steps)."""
import statistics, sys, time

import torch
import torch.nn.functional as F
import transformers


def main():
    cfg, B, T, threads, steps = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    conf = transformers.Qwen3Config.from_json_file(cfg)
    model = transformers.Qwen3ForCausalLM(conf).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    V = conf.vocab_size
    ids, tgt = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.view(-1, V), tgt.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times[2:] if len(times) > 3 else times)
    print(f"torch tokens_per_s {B * T / dt:.1f} (torch {torch.__version__}, {threads} threads, "
          f"attn {model.config._attn_implementation})")


if __name__ == "__main__":
    main()
