"""averis.torch — the averis W4A4G4 linear layer for PyTorch, and NVFP4
quantization of torch tensors.

    import averis.torch
    model = averis.torch.convert(model, recipe="averis", skip=["lm_head"])

swaps every ``nn.Linear`` of ``model`` (e.g. a transformers Qwen3 or Llama)
for :class:`Linear`, whose forward (Y = X·Wᵀ), dgrad (dX = D·W) and wgrad
(dW = Dᵀ·X) run on NVFP4 operands under the recipe (include/averis/qlinear.h):
on CPU tensors through the C library (qlin_forward / qlin_backward), on
CUDA tensors through our kernels (avc_qlin_forward / avc_qlin_backward; the
package must be built with AVERIS_CUDA=1). The compute is fp32: bf16/fp16
inputs and weights are widened and the results cast back; the bias is added
by PyTorch; inputs [..., in] run as 2-D [tokens, in].

Recipes: "bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht", "fp32", with
options after commas as in the CLI, e.g. "averis,seed=1,mean=fp4". FP4
recipes need in and out features that are multiples of 16.
"""
from __future__ import annotations

import fnmatch
import itertools
from typing import Any, Iterable, List, Optional, Tuple

import torch
from torch import nn

from . import BLOCKS, Quantized, _core, cols_padded, scale_shape

__all__ = ["Linear", "convert", "quantize_tensor", "dequantize_tensor"]

_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_layer_ids = itertools.count()


# ------------------------------------------------------------ quantization

def _check_tensor(x: torch.Tensor, what: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{what}: expected a 2-D tensor, got {x.dim()} dimensions")
    if x.numel() == 0:
        raise ValueError(f"{what}: empty tensor ({x.shape[0]} x {x.shape[1]})")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{what}: dtype {x.dtype} not supported (want float32, float16 or bfloat16)")


def _need_cuda(what: str) -> None:
    if not _core.cuda_compiled():
        raise NotImplementedError(f"{what}: this averis package was built without CUDA; "
                                  "reinstall with AVERIS_CUDA=1 (and nvcc on PATH) for CUDA tensors")


def quantize_tensor(x: torch.Tensor, block: str = "1x16", rht: bool = False, split: Optional[str] = None,
                    sr: bool = False, seed: int = 0, stream: int = 0, mean_fp4: bool = False) -> Quantized:
    """:func:`averis.quantize` for a torch tensor: the C library on CPU
    tensors, avc_quantize on CUDA tensors (same bits). The Quantized holds
    torch tensors on x's device; ``stats`` only on CPU."""
    _check_tensor(x, "quantize")
    rows, cols = x.shape
    dev = x.device
    codes = torch.empty((rows, cols_padded(cols) // 2), dtype=torch.uint8, device=dev)
    scales = torch.empty(scale_shape(rows, cols, block), dtype=torch.uint8, device=dev)
    mean = torch.empty(cols, dtype=torch.float32, device=dev) if split else None
    if dev.type == "cpu":
        src = x.detach().contiguous()
        amax, stats = _core.quantize(src.data_ptr(), _DTYPES[src.dtype], rows, cols, BLOCKS[block], rht,
                                     split is not None, mean_fp4, sr, seed, stream, codes.data_ptr(),
                                     scales.data_ptr(), 0 if mean is None else mean.data_ptr())
        return Quantized(codes, scales, amax, rows, cols, block, bool(rht), split, bool(mean_fp4), bool(sr), seed,
                         stream, mean, stats)
    if dev.type != "cuda":
        raise NotImplementedError(f"quantize: device {dev} not supported (cpu or cuda)")
    _need_cuda("quantize")
    with torch.cuda.device(dev):
        cs = torch.cuda.current_stream(dev).cuda_stream
        src = x.detach().to(torch.float32).contiguous()  # widening is exact
        amax = torch.empty(1, dtype=torch.float32, device=dev)
        mean_dev = 0
        if split:
            aux = torch.empty((3, cols), dtype=torch.float32, device=dev)
            ramax = torch.empty(1, dtype=torch.float32, device=dev)
            _core.cuda_colstats(src.data_ptr(), rows, cols, aux[0].data_ptr(), aux[1].data_ptr(), aux[2].data_ptr(),
                                ramax.data_ptr(), cs)
            mu = aux[0]
            mean_dev = mu.data_ptr()
            if mean_fp4:  # the term added back: μ as a 1×cols NVFP4 tensor, round trip
                mq = quantize_tensor(mu.view(1, cols), block="1x16")
                mean.copy_(dequantize_tensor(mq).view(cols))
            else:
                mean.copy_(mu)
        _core.cuda_quantize(src.data_ptr(), 0, rows, cols, BLOCKS[block], rht, sr, seed, stream, mean_dev,
                            codes.data_ptr(), scales.data_ptr(), amax.data_ptr(), cs)
        amax_f = float(amax.item())
    return Quantized(codes, scales, amax_f, rows, cols, block, bool(rht), split, bool(mean_fp4), bool(sr), seed,
                     stream, mean, None)


def dequantize_tensor(q: Quantized) -> torch.Tensor:
    """:func:`averis.dequantize` for a Quantized holding torch tensors: fp32
    [rows, cols] on the same device, the bits of ``averis quant``."""
    dev = q.codes.device
    if dev.type == "cuda" and not q.rht:
        _need_cuda("dequantize")
        with torch.cuda.device(dev):
            amax = torch.tensor([q.amax], dtype=torch.float32, device=dev)
            out = torch.empty((q.rows, q.cols), dtype=torch.float32, device=dev)
            _core.cuda_dequantize(q.codes.contiguous().data_ptr(), q.scales.contiguous().data_ptr(), amax.data_ptr(),
                                  q.rows, q.cols, BLOCKS[q.block], out.data_ptr(),
                                  torch.cuda.current_stream(dev).cuda_stream)
            if q.mean is not None:
                out += q.mean  # one fp32 add per element, as the CLI
            return out
    # CPU, and the inverse RHT of CUDA tensors: the C library on host copies
    codes, scales = q.codes.detach().cpu().contiguous(), q.scales.detach().cpu().contiguous()
    mean = None if q.mean is None else q.mean.detach().to("cpu", torch.float32).contiguous()
    out = torch.empty((q.rows, q.cols), dtype=torch.float32)
    _core.dequantize(codes.data_ptr(), scales.data_ptr(), q.rows, q.cols, BLOCKS[q.block], q.amax, q.rht,
                     None if mean is None else mean.data_ptr(), out.data_ptr())
    return out.to(dev)


# ------------------------------------------------------------ linear layer

class _QLinearFunction(torch.autograd.Function):
    """Y = X·Wᵀ under the recipe; backward dX = D·W and dW = Dᵀ·X under the
    recipe (straight-through: the gradients use the quantized operands).
    X [l, m], W [n, m] any float dtype; compute in fp32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, layer: "Linear", sr_stream: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.sr_stream = layer, sr_stream
        l, m = x.shape
        n = weight.shape[0]
        X = x.detach().to(torch.float32).contiguous()
        W = weight.detach().to(torch.float32).contiguous()
        Y = torch.empty((l, n), dtype=torch.float32, device=x.device)
        if l > 0:
            layer._run_forward(X, W, Y)
        return Y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        l, m = x.shape
        n = weight.shape[0]
        X = x.detach().to(torch.float32).contiguous()
        W = weight.detach().to(torch.float32).contiguous()
        D = dy.detach().to(torch.float32).contiguous()
        dX = torch.empty((l, m), dtype=torch.float32, device=x.device) if need_dx else None
        dW = torch.zeros((n, m), dtype=torch.float32, device=x.device) if need_dw else None  # the C layer adds
        if l > 0 and (need_dx or need_dw):
            ctx.layer._run_backward(X, W, D, dX, dW, ctx.sr_stream)
        return (None if dX is None else dX.to(x.dtype), None if dW is None else dW.to(weight.dtype), None, None)


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


class Linear(nn.Module):
    """A drop-in ``nn.Linear`` (y = x·Wᵀ + b) whose three GEMMs run under an
    averis recipe (W4A4G4 for the FP4 recipes).

    ``recipe``: "averis" (default), "averis-rht", "nvfp4", "nvfp4-rht",
    "bf16" or "fp32", with CLI options after commas ("averis,seed=3").
    Stochastic rounding of output gradients draws from SR stream
    ``(call << 16) | layer_id``: every forward call of the layer takes the
    next ``call`` (the backward of that call uses it), and ``layer_id``
    (unique per layer, settable) keeps layers apart, so a run replays
    bit-exactly on CPU.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, recipe: str = "averis",
                 device: Any = None, dtype: Optional[torch.dtype] = None, layer_id: Optional[int] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty((out_features, in_features), device=device, dtype=dtype))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
                                if bias else None)
        self._setup(recipe, layer_id)
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)  # PyTorch's init
        with torch.no_grad():
            self.weight.copy_(ref.weight)
            if bias:
                self.bias.copy_(ref.bias)

    def _setup(self, recipe: str, layer_id: Optional[int]) -> None:
        self.recipe = recipe
        self.recipe_info = _core.recipe(recipe)  # raises ValueError naming a bad token
        fp4 = self.recipe_info["fp4"]
        if fp4 and (self.in_features % 16 or self.out_features % 16):
            raise ValueError(f"recipe {recipe!r} needs in and out features that are multiples of 16, got "
                             f"{self.in_features} -> {self.out_features}")
        self.layer_id = next(_layer_ids) if layer_id is None else layer_id
        self.calls = 0
        self._ws: Any = None  # the C layer's scratch (CPU), made on first use

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # deepcopy / pickle: the scratch is not state
        state["_ws"] = None
        return state

    @classmethod
    def from_linear(cls, lin: nn.Linear, recipe: str = "averis", layer_id: Optional[int] = None) -> "Linear":
        """A Linear sharing lin's weight and bias Parameters (no copy: tied
        weights stay tied, device and dtype are kept)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.weight = lin.weight
        self.register_parameter("bias", lin.bias)
        self._setup(recipe, layer_id)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, recipe={self.recipe!r}")

    def next_sr_stream(self) -> int:
        """The SR stream of the next call: (call << 16) | (layer_id & 0xffff)."""
        s = (self.calls << 16) | (self.layer_id & 0xFFFF)
        self.calls += 1
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"averis Linear: input has {x.shape[-1]} features, the layer {self.in_features}")
        lead = x.shape[:-1]
        y = _QLinearFunction.apply(x.reshape(-1, self.in_features), self.weight, self, self.next_sr_stream())
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    # -- the C calls: X, W, D fp32 contiguous on one device
    def _run_forward(self, X: torch.Tensor, W: torch.Tensor, Y: torch.Tensor) -> None:
        l, m = X.shape
        n = W.shape[0]
        if X.device.type == "cpu":
            self._ws = self._ws or _core.ws_new()
            _core.qlin_forward(self.recipe, X.data_ptr(), W.data_ptr(), l, m, n, Y.data_ptr(), self._ws)
        elif X.device.type == "cuda":
            _need_cuda("averis Linear")
            with _device_sync(X.device):
                _core.cuda_qlin_forward(self.recipe, X.data_ptr(), W.data_ptr(), l, m, n, Y.data_ptr())
        else:
            raise NotImplementedError(f"averis Linear: device {X.device} not supported (cpu or cuda)")

    def _run_backward(self, X: torch.Tensor, W: torch.Tensor, D: torch.Tensor, dX: Optional[torch.Tensor],
                      dW: Optional[torch.Tensor], sr_stream: int) -> None:
        l, m = X.shape
        n = W.shape[0]
        if X.device.type == "cpu":
            self._ws = self._ws or _core.ws_new()
            _core.qlin_backward(self.recipe, X.data_ptr(), W.data_ptr(), D.data_ptr(), l, m, n,
                                None if dX is None else dX.data_ptr(), None if dW is None else dW.data_ptr(),
                                sr_stream, self._ws)
        else:
            _need_cuda("averis Linear")
            with _device_sync(X.device):
                _core.cuda_qlin_backward(self.recipe, X.data_ptr(), W.data_ptr(), D.data_ptr(), l, m, n, _ptr(dX),
                                         _ptr(dW), sr_stream)


class _device_sync:
    """Runs a block on x's device; our kernels use the legacy default stream
    (and synchronise the device at the end), so work queued on another
    current stream is waited for first."""

    def __init__(self, device: torch.device) -> None:
        self.ctx = torch.cuda.device(device)
        self.device = device

    def __enter__(self) -> None:
        self.ctx.__enter__()
        cur = torch.cuda.current_stream(self.device)
        if cur != torch.cuda.default_stream(self.device):
            cur.synchronize()

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)


# ---------------------------------------------------------------- convert

def _skipped(name: str, patterns: Iterable[str]) -> bool:
    """A pattern matches the qualified name or any dotted suffix of it
    ("lm_head" matches "lm_head" and "model.lm_head"; globs allowed:
    "*.mlp.*", "layers.0.*")."""
    parts = name.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in suffixes)


def convert(model: nn.Module, recipe: str = "averis", skip: Iterable[str] = ("lm_head",)) -> nn.Module:
    """Replaces, in place, every ``nn.Linear`` of model whose qualified name
    matches none of ``skip`` by an averis :class:`Linear` under ``recipe``,
    sharing its weight and bias, and returns model. Layer ids (the SR
    streams) follow the order of ``model.named_modules()``. Raises
    ValueError before changing anything if an FP4 recipe meets a layer whose
    features are not multiples of 16 (skip it by name)."""
    skip = list(skip)
    info = _core.recipe(recipe)
    targets: List[Tuple[nn.Module, str, str, nn.Linear]] = []
    modules = dict(model.named_modules())
    for full, child in modules.items():
        if type(child) is nn.Linear and full and not _skipped(full, skip):
            parent_name, _, child_name = full.rpartition(".")
            targets.append((modules[parent_name], child_name, full, child))
    if info["fp4"]:
        bad = [f"{full} ({c.in_features} -> {c.out_features})" for _, _, full, c in targets
               if c.in_features % 16 or c.out_features % 16]
        if bad:
            raise ValueError(f"recipe {recipe!r} needs features that are multiples of 16; skip these: "
                             + ", ".join(bad))
    for layer_id, (parent, child_name, _, child) in enumerate(targets):
        setattr(parent, child_name, Linear.from_linear(child, recipe, layer_id=layer_id))
    return model
