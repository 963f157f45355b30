#!/usr/bin/env python3
"""Ground truth for the model: Hugging Face transformers' Qwen3ForCausalLM.

  python3 tests/gen_qwen3_fixture.py OUTDIR            write the fixtures
  python3 tests/gen_qwen3_fixture.py --check-ckpt DIR TOKENS.npy LOGITS.npy
        load an averis checkpoint with Qwen3ForCausalLM.from_pretrained and
        compare its logits on TOKENS with the ones averis wrote

For each of two small configs (tied and untied LM head, head_dim ≠ C/H)
it builds the HF model with random weights (norm weights near 1, linears
wider than the default init so every path matters), runs one batch in fp32
on the CPU, and writes OUTDIR/NAME/config.json and OUTDIR/NAME/fixture.safetensors:
the weights under their HF names, input_ids and targets (I32 [B,T]),
logits (F32 [B,T,V]), loss (F32 [1]) and grad.<name> for every parameter.
Needs torch, transformers, safetensors (run on the device machine).
"""
import json, os, sys

import torch
import torch.nn.functional as Fn
import transformers
from safetensors.torch import save_file

VERSION = "1"
CONFIGS = {
    "tied": dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rope_theta=10000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True),
    "untied": dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                   num_key_value_heads=3, head_dim=8, max_position_embeddings=64, rope_theta=1000000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=False),
}
B, T = 2, 12


def build(cfg):
    conf = transformers.Qwen3Config(**cfg, hidden_act="silu", attention_bias=False, use_sliding_window=False)
    conf._attn_implementation = "eager"
    model = transformers.Qwen3ForCausalLM(conf).float().eval()
    return conf, model


def make(outdir, name, cfg, seed):
    torch.manual_seed(seed)
    conf, model = build(cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    ids = torch.randint(0, cfg["vocab_size"], (B, T))
    tgt = torch.randint(0, cfg["vocab_size"], (B, T))
    out = model(input_ids=ids)
    logits = out.logits.float()
    loss = Fn.cross_entropy(logits.reshape(-1, cfg["vocab_size"]), tgt.reshape(-1))
    loss.backward()
    tensors = {}
    for pname, p in model.named_parameters():
        tensors[pname] = p.detach().contiguous()
        tensors["grad." + pname] = p.grad.detach().contiguous()
    tensors["input_ids"] = ids.to(torch.int32).contiguous()
    tensors["targets"] = tgt.to(torch.int32).contiguous()
    tensors["logits"] = logits.detach().contiguous()
    tensors["loss"] = loss.detach().reshape(1)
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    meta = {"fixture_version": VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
            "seed": str(seed)}
    save_file(tensors, os.path.join(d, "fixture.safetensors"), metadata=meta)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(cfg, architectures=["Qwen3ForCausalLM"], model_type="qwen3"), f, indent=2)
    print(f"{name}: loss {loss.item():.6f}, {sum(p.numel() for p in model.parameters())} parameters")


def check_ckpt(ckdir, tokens_npy, logits_npy):
    import numpy as np
    model = transformers.Qwen3ForCausalLM.from_pretrained(ckdir, torch_dtype=torch.float32).eval()
    ids = torch.from_numpy(np.load(tokens_npy).astype("int64"))
    ref = torch.from_numpy(np.load(logits_npy))
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
    print(f"from_pretrained({ckdir}): logits {tuple(got.shape)}, max rel err vs averis {err:.3e}")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if len(sys.argv) == 5 and sys.argv[1] == "--check-ckpt":
        sys.exit(check_ckpt(*sys.argv[2:]))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        make(sys.argv[1], name, cfg, 1234 + i)
