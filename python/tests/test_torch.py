"""The torch path of the averis package (skipped where torch is missing; run
on the GPU machine): quantization of CPU and CUDA tensors bit for bit
against the CLI, averis.torch.Linear against the C layer (CPU: exact; CUDA:
within include/averis/cuda.h's tolerance, 1e-4 of the norm as in
cuda/test_cuda.cu), convert, and a few training steps of a tiny
transformers Qwen3. A machine with a GPU but a package built without CUDA
fails the CUDA cases (rebuild with AVERIS_CUDA=1)."""
from __future__ import annotations

import copy
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import averis  # noqa: E402
import averis.torch as at  # noqa: E402
from conftest import FLAG_SETS, first_difference, options_of, read_packed, run_quant  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
RECIPES = ["fp32", "bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"]


def as_npy(x: "torch.Tensor") -> np.ndarray:
    """The .npy the CLI reads for x: float32/float16 as they are, bfloat16 as
    its bits in uint16."""
    x = x.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def rel_err(a: "torch.Tensor", ref: "torch.Tensor") -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return float((a - ref).norm() / ref.norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(3, 17), (16, 16), (37, 40), (65, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: " ".join(f) or "plain")
def test_quantize_tensor_matches_cli(averis_bin: Path, tmp_path: Path, flags: list, shape: tuple, dtype: str,
                                     device: str) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(repr((flags, shape, dtype)).encode()))
    x = torch.randn(shape, generator=g) * 0.5 + torch.empty(shape[1]).uniform_(-3, 3, generator=g)
    x[torch.rand(shape, generator=g) < 0.03] *= 60.0
    x = x.to(getattr(torch, dtype)).to(device)
    deq, packed = run_quant(averis_bin, as_npy(x), flags, tmp_path)
    q = averis.quantize(x, **options_of(flags))
    assert q.codes.device.type == device and q.codes.dtype == torch.uint8
    ref = read_packed(packed)
    for name in ("codes", "scales"):
        d = first_difference(getattr(q, name).cpu().numpy(), ref[name])
        assert d is None, f"{name}: {d}"
    assert np.float32(q.amax) == np.float32(ref["amax"]), f"amax {q.amax} vs {ref['amax']}"
    assert q.packed() == packed, "packed bytes differ from the CLI's file"
    y = averis.dequantize(q)
    assert y.device.type == device and y.dtype == torch.float32
    d = first_difference(y.cpu().numpy(), deq)
    assert d is None, f"dequantized: {d}"


def test_quantize_rejects_bad_tensors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        averis.quantize(torch.zeros(2, 3, 16))
    with pytest.raises(TypeError, match="int32"):
        averis.quantize(torch.zeros(2, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        averis.analyze(torch.zeros(16))


def test_analyze_tensor_equals_numpy() -> None:
    x = torch.randn(40, 32) + 1.5
    assert averis.analyze(x) == averis.analyze(x.numpy())


# ------------------------------------------------------------ linear layer

def layer_inputs(m: int = 64, n: int = 32, seed: int = 2024) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, m, generator=g) + 0.7  # a mean bias, as in LLM activations
    w = 0.05 * torch.randn(n, m, generator=g)
    b = 0.1 * torch.randn(n, generator=g)
    dy = 1e-3 * torch.randn(2, 24, n, generator=g) + 2e-4
    return x, w, b, dy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_linear_matches_c_layer(recipe: str, device: str) -> None:
    """forward, dgrad, wgrad and the bias gradient of averis.torch.Linear on
    [2, 24, 64] inputs vs qlin_forward / qlin_backward of the C library on
    the same [48, 64] operands (sr_stream: the layer's first call)."""
    x, w, b, dy = layer_inputs()
    layer = at.Linear(64, 32, bias=True, recipe=recipe).to(device)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    stream = (0 << 16) | layer.layer_id
    xd = x.to(device).clone().requires_grad_(True)
    y = layer(xd)
    y.backward(dy.to(device))
    assert y.shape == (2, 24, 32) and layer.calls == 1

    x2, d2 = x.reshape(48, 64).numpy(), dy.reshape(48, 32).numpy()
    y_ref = torch.from_numpy(averis.linear_forward(x2, w.numpy(), recipe)).reshape(2, 24, 32) + b
    dx_ref, dw_ref = (torch.from_numpy(a) for a in averis.linear_backward(x2, w.numpy(), d2, recipe, stream))
    got = {"Y": y, "dX": xd.grad.reshape(48, 64), "dW": layer.weight.grad}
    want = {"Y": y_ref, "dX": dx_ref, "dW": dw_ref}
    for k in got:
        if device == "cpu":
            d = first_difference(got[k].detach().numpy(), want[k].numpy())
            assert d is None, f"{recipe} {k}: {d}"
        else:
            e = rel_err(got[k], want[k])
            assert e <= 1e-4, f"{recipe} {k}: relative error {e:.3g} vs the CPU layer (bound 1e-4)"
    assert rel_err(layer.bias.grad, dy.sum(dim=(0, 1))) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_linear_bf16_model(device: str) -> None:
    """bf16 parameters and inputs: fp32 compute, results cast back."""
    x, w, _, dy = layer_inputs()
    layer = at.Linear(64, 32, recipe="averis").to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(w)
    xb = x.to(device, torch.bfloat16).requires_grad_(True)
    y = layer(xb)
    y.backward(dy.to(device, torch.bfloat16))
    assert y.dtype == torch.bfloat16 and xb.grad.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.bfloat16
    ref = averis.linear_forward(xb.detach().float().cpu().reshape(48, 64).numpy(),
                                layer.weight.detach().float().cpu().numpy(), "averis")
    assert rel_err(y.reshape(48, 32), torch.from_numpy(ref)) < 1e-2


def test_sr_streams_advance_and_replay() -> None:
    x, w, _, dy = layer_inputs()
    layer = at.Linear(64, 32, recipe="nvfp4")
    with torch.no_grad():
        layer.weight.copy_(w)

    def dgrad() -> "torch.Tensor":
        xi = x.clone().requires_grad_(True)
        layer(xi).backward(dy)
        return xi.grad

    first, second = dgrad(), dgrad()
    assert not torch.equal(first, second), "two calls drew the same SR bits"
    layer.calls = 0
    assert torch.equal(dgrad(), first), "the same stream did not replay"


def test_linear_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        at.Linear(20, 32, recipe="averis")
    with pytest.raises(ValueError, match="unknown recipe"):
        at.Linear(16, 16, recipe="fp5")
    assert at.Linear(20, 30, recipe="bf16")(torch.randn(3, 20)).shape == (3, 30)


def test_convert_swaps_and_skips() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.Linear(32, 64)
            self.down = torch.nn.Linear(64, 32, bias=False)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            return self.down(torch.relu(self.up(x)))

    model = torch.nn.Sequential(Block(), Block(), torch.nn.Linear(32, 48))
    model.add_module("lm_head", torch.nn.Linear(48, 10))
    weight = model[1].up.weight
    x = torch.randn(5, 32)
    ref = model[2](model[1](model[0](x)))
    at.convert(model, recipe="fp32", skip=["lm_head", "1.down"])
    swapped = sorted(name for name, mod in model.named_modules() if isinstance(mod, at.Linear))
    assert swapped == ["0.down", "0.up", "1.up", "2"]
    assert type(model[1].down) is torch.nn.Linear and type(model.lm_head) is torch.nn.Linear
    assert model[1].up.weight is weight, "convert copied a parameter"
    assert [model[0].up.layer_id, model[0].down.layer_id, model[1].up.layer_id, model[2].layer_id] == [0, 1, 2, 3]
    assert rel_err(model[2](model[1](model[0](x))), ref) < 1e-6
    clone = copy.deepcopy(model)  # the C scratch is not state: copies and pickles work
    assert torch.equal(clone[2](clone[1](clone[0](x))), model[2](model[1](model[0](x))))
    with pytest.raises(ValueError, match="lm_head"):
        at.convert(model, recipe="averis", skip=[])  # lm_head is 48 -> 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["averis", "nvfp4-rht"])
def test_qwen3_trains(recipe: str, device: str) -> None:
    """A tiny transformers Qwen3 (config built here, no download) converted
    with convert trains on a fixed batch: finite, falling loss."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    model = transformers.Qwen3ForCausalLM(cfg).to(device)
    model.config._attn_implementation = "eager"
    at.convert(model, recipe=recipe, skip=["lm_head"])
    layers = [m for m in model.modules() if isinstance(m, at.Linear)]
    assert len(layers) == 7 * cfg.num_hidden_layers
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (4, 32), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall: {losses}"
    assert all(m.calls == 15 for m in layers)
