"""averis — NVFP4 (4-bit) tools from the averis C library.

* :func:`quantize` / :func:`dequantize`: NVFP4 quantization of a 2-D array,
  bit-identical to ``averis quant`` (1x16 or 16x16 blocks, the random
  Hadamard transform, the Averis mean split, stochastic rounding), on numpy
  arrays and torch tensors (CPU through the C library, CUDA through our
  kernels when the package was built with ``AVERIS_CUDA=1``).
* :func:`analyze`: the mean-bias metrics of a tokens x features matrix
  (``averis analyze --npy``) as a dict.
* :mod:`averis.torch`: ``Linear`` and ``convert`` — a W4A4G4 linear layer
  for PyTorch under the recipes bf16, nvfp4, nvfp4-rht, averis, averis-rht.

Checkpoints written by ``averis train`` are Hugging Face safetensors with a
config.json, so transformers reads them directly::

    from transformers import Qwen3ForCausalLM
    model = Qwen3ForCausalLM.from_pretrained("out/run/ckpt_00002000")
"""
from __future__ import annotations

import dataclasses
import struct
import sys
from typing import Any, Dict, Optional

import numpy as np

from . import _core

__all__ = ["Quantized", "quantize", "dequantize", "analyze", "parse_recipe", "linear_forward", "linear_backward",
           "cuda_compiled", "BLOCKS", "RECIPES"]
__version__ = "0.1.0"

#: scale-block layouts: one E4M3 scale per 16 elements of a row, or per 16x16 tile
BLOCKS: Dict[str, int] = {"1x16": 0, "16x16": 1}
#: recipe names of the quantized linear layer (include/averis/qlinear.h)
RECIPES = ("bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht", "fp32")

# dtype codes of nvfp4_dtype
_F32, _BF16, _F16 = 0, 1, 2
# flags of the packed file (include/averis/quant.h)
_PACKED_TILE, _PACKED_RHT, _PACKED_SPLIT, _PACKED_MEAN_FP4, _PACKED_SR = 1, 2, 4, 8, 16


def cuda_compiled() -> bool:
    """True if this build of the package has the CUDA path (AVERIS_CUDA=1)."""
    return bool(_core.cuda_compiled())


def cols_padded(cols: int) -> int:
    """Columns rounded up to whole 16-element blocks (pad elements are 0)."""
    return (cols + 15) // 16 * 16


def scale_shape(rows: int, cols: int, block: str) -> tuple:
    """Shape of the E4M3 scale array: [rows, nb] for 1x16, [ceil(rows/16), nb] for 16x16."""
    nb = cols_padded(cols) // 16
    return (rows, nb) if block == "1x16" else ((rows + 15) // 16, nb)


@dataclasses.dataclass(frozen=True)
class Quantized:
    """A packed NVFP4 tensor of ``rows x cols`` values, quantized along rows.

    ``codes`` uint8 [rows, cols_padded/2]: byte j of a row holds element 2j in
    its low nibble and 2j+1 in its high nibble (E2M1 codes). ``scales`` uint8
    E4M3 block scales (:func:`scale_shape`). ``amax`` the per-tensor fp32 amax
    of the quantizer input (the residual with the split, the transformed
    values with RHT). ``mean`` float32 [cols]: with ``split="mean"``, the term
    added back on dequantization (mu, or its NVFP4 round trip if
    ``mean_fp4``), else None. Arrays are numpy arrays, or torch tensors on the
    input's device. ``stats`` (CPU only): the quantizer's counts (nonzero,
    flushed to zero, saturated blocks, NaN/Inf), as in ``averis quant``.
    """

    codes: Any
    scales: Any
    amax: float
    rows: int
    cols: int
    block: str
    rht: bool
    split: Optional[str]
    mean_fp4: bool
    sr: bool
    seed: int
    stream: int
    mean: Any = None
    stats: Optional[Dict[str, int]] = None

    @property
    def shape(self) -> tuple:
        """(rows, cols) of the quantized values."""
        return (self.rows, self.cols)

    @property
    def cols_padded(self) -> int:
        """cols rounded up to whole blocks of 16."""
        return cols_padded(self.cols)

    def dequantize(self) -> Any:
        """The fp32 values (inverse RHT, mean added back): :func:`dequantize`."""
        return dequantize(self)

    def packed(self) -> bytes:
        """The bytes ``averis quant --packed FILE`` writes for the same input
        and options (header, codes, scales, and the mean with the split)."""
        flags = ((_PACKED_TILE if self.block == "16x16" else 0) | (_PACKED_RHT if self.rht else 0) |
                 (_PACKED_SPLIT if self.split else 0) | (_PACKED_MEAN_FP4 if self.split and self.mean_fp4 else 0) |
                 (_PACKED_SR if self.sr else 0))
        header = b"AVNVFP4\0" + struct.pack("<IIqqfI", 1, flags, self.rows, self.cols, self.amax, 0)
        parts = [header, _host_bytes(self.codes), _host_bytes(self.scales)]
        if self.split:
            parts.append(_host_bytes(self.mean))
        return b"".join(parts)


def _host_bytes(a: Any) -> bytes:
    """Raw bytes of a numpy array or a (possibly CUDA) torch tensor."""
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a).tobytes()
    return a.detach().contiguous().cpu().view(-1).view(dtype=_torch().uint8).numpy().tobytes()


def _torch() -> Any:
    import torch

    return torch


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _check_options(block: str, split: Optional[str], mean_fp4: bool) -> None:
    if block not in BLOCKS:
        raise ValueError(f"block must be '1x16' or '16x16', got {block!r}")
    if split not in (None, "mean"):
        raise ValueError(f"split takes None or 'mean', got {split!r}")
    if mean_fp4 and split is None:
        raise ValueError("mean_fp4 needs split='mean'")


def _numpy_input(x: Any, what: str) -> tuple:
    """(C-contiguous array, dtype code) of a 2-D float32/float16/bfloat16
    numpy array, or an exception naming what is wrong."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array, got {x.ndim} dimensions")
    if x.size == 0:
        raise ValueError(f"{what}: empty array ({x.shape[0]} x {x.shape[1]})")
    if x.dtype.name == "bfloat16":  # ml_dtypes.bfloat16: the bits are what the C library reads
        return np.ascontiguousarray(x).view(np.uint16), _BF16
    if x.dtype == np.uint16:  # the CLI's convention: '<u2' holds bfloat16 bits
        return np.ascontiguousarray(x, dtype=np.dtype("<u2")), _BF16
    if x.dtype.kind == "f" and x.dtype.itemsize in (4, 2):
        arr = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        return arr, _F32 if x.dtype.itemsize == 4 else _F16
    raise TypeError(f"{what}: dtype {x.dtype} not supported (want float32, float16, or bfloat16 / uint16 bfloat16 bits)")


def quantize(x: Any, block: str = "1x16", rht: bool = False, split: Optional[str] = None, sr: bool = False,
             seed: int = 0, stream: int = 0, mean_fp4: bool = False) -> Quantized:
    """NVFP4-quantize a 2-D array along its last dimension.

    Bit-identical to ``averis quant IN.npy --out OUT.npy --packed P`` with the
    same options: ``block`` "1x16" (default) or "16x16" scale blocks; ``rht``
    the random Hadamard transform of 16-groups along the row; ``split="mean"``
    the Averis split (the per-column mean over rows is subtracted and only
    the residual is quantized; ``mean_fp4`` keeps that mean as its NVFP4 round
    trip, the CLI's ``--mean-fp4``); ``sr`` stochastic rounding keyed by
    ``seed`` and ``stream`` (Philox-4x32-10; the CLI uses stream 0).

    ``x``: numpy array (float32, float16, ml_dtypes.bfloat16, or uint16
    holding bfloat16 bits as the CLI reads '<u2' .npy files) or torch
    tensor (float32, bfloat16, float16; CPU or CUDA). float16/bfloat16 values
    are widened to fp32 exactly first, as the CLI does.
    """
    _check_options(block, split, mean_fp4)
    if _is_torch(x):
        from . import torch as at

        return at.quantize_tensor(x, block=block, rht=rht, split=split, sr=sr, seed=seed, stream=stream,
                                  mean_fp4=mean_fp4)
    arr, dtype = _numpy_input(x, "quantize")
    rows, cols = arr.shape
    codes = np.empty((rows, cols_padded(cols) // 2), np.uint8)
    scales = np.empty(scale_shape(rows, cols, block), np.uint8)
    mean = np.empty(cols, np.float32) if split else None
    amax, stats = _core.quantize(arr, dtype, rows, cols, BLOCKS[block], rht, split is not None, mean_fp4, sr, seed,
                                 stream, codes, scales, mean)
    return Quantized(codes, scales, amax, rows, cols, block, bool(rht), split, bool(mean_fp4), bool(sr), seed, stream,
                     mean, stats)


def dequantize(q: Quantized) -> Any:
    """fp32 values of q: e2m1(code)·e4m3(scale)·S_dec, the inverse RHT if q was
    transformed, plus the mean if q was split — the array ``averis quant``
    writes to OUT.npy, bit for bit. numpy in, numpy out; torch in, torch out
    (on q's device)."""
    if not isinstance(q, Quantized):
        raise TypeError(f"dequantize: expected a Quantized, got {type(q).__name__}")
    if _is_torch(q.codes):
        from . import torch as at

        return at.dequantize_tensor(q)
    out = np.empty((q.rows, q.cols), np.float32)
    _core.dequantize(np.ascontiguousarray(q.codes), np.ascontiguousarray(q.scales), q.rows, q.cols, BLOCKS[q.block],
                     q.amax, q.rht, None if q.mean is None else np.ascontiguousarray(q.mean, np.float32), out)
    return out


def analyze(x: Any) -> Dict[str, float]:
    """The mean-bias metrics of X [tokens x features] (include/averis/analysis.h),
    with the keys of ``averis analyze --npy``'s JSON:

    R (mean-energy ratio ‖μ‖/rms token norm), mean_norm, rms_token_norm,
    sigma1 and cos_mu_v1 (|cos| of μ and the top right-singular vector),
    spike_k, e_mean / e_spike / e_tail (energy shares), top_count,
    rho_median / rho_frac_half (μ_j²/X_ij² over the top 0.1% magnitudes),
    relmse_* and flushed_* of the NVFP4 round trip (plain, split, rht,
    split_rht). Accepts what :func:`quantize` accepts (CUDA tensors are
    copied to the host); the values should be finite.
    """
    if _is_torch(x):
        torch = _torch()
        if x.dim() != 2:
            raise ValueError(f"analyze: expected a 2-D tensor, got {x.dim()} dimensions")
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"analyze: dtype {x.dtype} not supported (want float32, float16 or bfloat16)")
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
    arr, dtype = _numpy_input(x, "analyze")
    if dtype == _BF16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # float16 → float32 is exact
    return _core.analyze(arr, arr.shape[0], arr.shape[1])


def parse_recipe(spec: str) -> Dict[str, Any]:
    """The linear layer's recipe "NAME[,key=value...]" (NAME in :data:`RECIPES`;
    keys seed=N, mean=fp32|fp4, sr=0|1, rht=0|1, wblock=16x16|1x16) as a dict
    of its switches; ValueError with the library's message names a bad token."""
    return _core.recipe(spec)


def _f32_matrix(a: Any, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != np.float32:
        desc = f"{a.ndim}-D {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"{what}: expected a 2-D float32 numpy array, got {desc}")
    return np.ascontiguousarray(a, dtype=np.dtype("=f4"))


def linear_forward(x: np.ndarray, w: np.ndarray, recipe: str = "averis") -> np.ndarray:
    """Y [l, n] = X [l, m]·W [n, m]ᵀ under the recipe (qlin_forward of the C
    library; FP4 recipes need m and n multiples of 16). float32 numpy in and
    out; :class:`averis.torch.Linear` is the same layer for PyTorch."""
    X, W = _f32_matrix(x, "linear_forward: x"), _f32_matrix(w, "linear_forward: w")
    if X.shape[1] != W.shape[1]:
        raise ValueError(f"linear_forward: x has {X.shape[1]} features, w {W.shape[1]}")
    y = np.empty((X.shape[0], W.shape[0]), np.float32)
    _core.qlin_forward(recipe, X, W, X.shape[0], X.shape[1], W.shape[0], y, _core.ws_new())
    return y


def linear_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, recipe: str = "averis",
                    sr_stream: int = 0) -> tuple:
    """(dX [l, m], dW [n, m]) for D = dL/dY [l, n] under the recipe
    (qlin_backward of the C library): dX = D̄·W̄, dW = D̄ᵀ·X̄ with the recipe's
    split/RHT; ``sr_stream`` keys the stochastic rounding of D."""
    X, W = _f32_matrix(x, "linear_backward: x"), _f32_matrix(w, "linear_backward: w")
    D = _f32_matrix(dy, "linear_backward: dy")
    l, m = X.shape
    n = W.shape[0]
    if W.shape[1] != m or D.shape != (l, n):
        raise ValueError(f"linear_backward: shapes x {X.shape}, w {W.shape}, dy {D.shape} do not fit")
    dx = np.empty((l, m), np.float32)
    dw = np.zeros((n, m), np.float32)  # the C layer accumulates into dW
    _core.qlin_backward(recipe, X, W, D, l, m, n, dx, dw, sr_stream, _core.ws_new())
    return dx, dw
