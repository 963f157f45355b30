#!/usr/bin/env python3
"""Ground truth for the MoE model: transformers' Qwen3MoeForCausalLM.

  python3 tests/gen_qwen3_moe_fixture.py OUTDIR        write the fixtures
  python3 tests/gen_qwen3_moe_fixture.py --check-ckpt DIR TOKENS.npy LOGITS.npy
        load an averis MoE checkpoint with Qwen3MoeForCausalLM.from_pretrained,
        compare its logits on TOKENS with the ones averis wrote, and check that
        save_pretrained writes the per-expert names averis reads

For each config it builds the HF model with random weights (norms near 1,
linears and router wide enough that routing is decisive), runs one batch in
fp32 on the CPU with output_router_logits, and writes OUTDIR/NAME/config.json
and OUTDIR/NAME/fixture.safetensors: the weights under the checkpoint names
save_pretrained writes (model.layers.N.mlp.gate.weight,
model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight: transformers ≥ 5
fuses the experts in memory, [E, 2I, C] gate_up_proj and [E, C, I]
down_proj, and converts on load and save), input_ids and targets (I32
[B,T]), logits (F32 [B,T,V]), ce (cross-entropy of logits vs targets, not
shifted), aux (transformers' load_balancing_loss_func), loss = ce +
router_aux_loss_coef·aux, grad.NAME of that loss for every parameter.
Needs torch, transformers, safetensors.
"""
import json, os, sys, tempfile

import torch
import torch.nn.functional as Fn
import transformers
from safetensors.torch import save_file

VERSION = "1"
BASE = dict(hidden_act="silu", attention_bias=False, use_sliding_window=False, max_position_embeddings=64,
            rms_norm_eps=1e-6)
CONFIGS = {
    # 6 experts top-2, renormalised; layer 1 keeps a dense MLP (mlp_only_layers)
    "moe": dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rope_theta=10000.0, tie_word_embeddings=False, num_experts=6,
                num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
                mlp_only_layers=[1], output_router_logits=True, router_aux_loss_coef=0.05),
    # 16 experts top-1 on 12 tokens (some experts get none), weights not
    # renormalised, every second layer sparse, tied head
    "moe_sparse": dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=True,
                       num_experts=16, num_experts_per_tok=1, moe_intermediate_size=16, norm_topk_prob=False,
                       decoder_sparse_step=2, mlp_only_layers=[], output_router_logits=True,
                       router_aux_loss_coef=0.1),
}
SHAPES = {"moe": (2, 12), "moe_sparse": (2, 6)}


def build(cfg):
    conf = transformers.Qwen3MoeConfig(**BASE, **cfg)
    conf._attn_implementation = "eager"
    if hasattr(conf, "_experts_implementation"):
        conf._experts_implementation = "eager"
    model = transformers.Qwen3MoeForCausalLM(conf).float().eval()
    return conf, model


def split_experts(name, t):
    """A fused expert tensor → {checkpoint name: tensor} per expert (else as is)."""
    if name.endswith("mlp.experts.gate_up_proj"):
        pre, I = name[: -len("gate_up_proj")], t.shape[1] // 2
        out = {}
        for e in range(t.shape[0]):
            out[f"{pre}{e}.gate_proj.weight"] = t[e, :I].contiguous()
            out[f"{pre}{e}.up_proj.weight"] = t[e, I:].contiguous()
        return out
    if name.endswith("mlp.experts.down_proj"):
        pre = name[: -len("down_proj")]
        return {f"{pre}{e}.down_proj.weight": t[e].contiguous() for e in range(t.shape[0])}
    return {name: t.contiguous()}


def make(outdir, name, cfg, seed):
    B, T = SHAPES[name]
    for attempt in range(50):  # a draw whose top-k choices are decisive (no near-ties)
        torch.manual_seed(seed + 1000 * attempt)
        conf, model = build(cfg)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.ndim == 1:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif pname.endswith("mlp.gate.weight"):
                    p.copy_(0.4 * torch.randn_like(p))
                else:
                    p.copy_(0.15 * torch.randn_like(p))
        ids = torch.randint(0, cfg["vocab_size"], (B, T))
        tgt = torch.randint(0, cfg["vocab_size"], (B, T))
        out = model(input_ids=ids, output_router_logits=True)
        k = cfg["num_experts_per_tok"]
        gap = min((torch.softmax(z.float(), -1).sort(-1, descending=True).values[:, k - 1] -
                   torch.softmax(z.float(), -1).sort(-1, descending=True).values[:, k]).min().item()
                  for z in out.router_logits)
        if gap > 2e-3:
            break
    else:
        sys.exit(f"{name}: no draw with decisive routing")
    logits = out.logits.float()
    ce = Fn.cross_entropy(logits.reshape(-1, cfg["vocab_size"]), tgt.reshape(-1))
    aux = transformers.models.qwen3_moe.modeling_qwen3_moe.load_balancing_loss_func(
        out.router_logits, cfg["num_experts"], k, None)
    assert torch.allclose(aux, out.aux_loss)
    loss = ce + cfg["router_aux_loss_coef"] * aux
    loss.backward()
    tensors = {}
    for pname, p in model.named_parameters():
        tensors.update(split_experts(pname, p.detach()))
        tensors.update({"grad." + n: g for n, g in split_experts(pname, p.grad.detach()).items()})
    counts = []
    for z in out.router_logits:  # tokens per expert, per MoE layer (for the README)
        sel = torch.topk(torch.softmax(z.float(), -1), k, -1).indices.reshape(-1)
        counts.append(torch.bincount(sel, minlength=cfg["num_experts"]).tolist())
    tensors["input_ids"] = ids.to(torch.int32).contiguous()
    tensors["targets"] = tgt.to(torch.int32).contiguous()
    tensors["logits"] = logits.detach().contiguous()
    tensors["ce"] = ce.detach().reshape(1)
    tensors["aux"] = aux.detach().reshape(1).float()
    tensors["loss"] = loss.detach().reshape(1)
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    meta = {"fixture_version": VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
            "seed": str(seed), "attempt": str(attempt), "expert_counts": json.dumps(counts)}
    save_file(tensors, os.path.join(d, "fixture.safetensors"), metadata=meta)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(BASE, **cfg, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe"), f, indent=2)
    # the names save_pretrained writes are the ones in the fixture
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        from safetensors import safe_open
        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as f:
            saved = set(f.keys())
    want = {n for n in tensors if n.startswith("model.") or n == "lm_head.weight"}
    if cfg["tie_word_embeddings"]:
        saved.discard("lm_head.weight")
    assert saved == want, (sorted(saved ^ want))[:8]
    print(f"{name}: ce {ce.item():.6f} aux {aux.item():.6f} loss {loss.item():.6f}, "
          f"{sum(p.numel() for p in model.parameters())} parameters, tokens per expert {counts}, "
          f"top-k gap {gap:.2e}; save_pretrained names match")


def check_ckpt(ckdir, tokens_npy, logits_npy):
    import numpy as np
    model = transformers.Qwen3MoeForCausalLM.from_pretrained(ckdir, dtype=torch.float32).eval()
    ids = torch.from_numpy(np.load(tokens_npy).astype("int64"))
    ref = torch.from_numpy(np.load(logits_npy))
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
    print(f"Qwen3MoeForCausalLM.from_pretrained({ckdir}): logits {tuple(got.shape)}, max rel err vs averis {err:.3e}")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--check-ckpt":
        sys.exit(check_ckpt(*sys.argv[2:]))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        make(sys.argv[1], name, cfg, 4321 + i)
