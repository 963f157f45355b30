"""The numpy path of the averis package (runs in CI, no torch): quantize and
dequantize bit for bit against the CLI and the PyTorch-made fixtures, the
analysis against numpy's reference values and closed forms, the linear
layer against products of quantized operands, and the error messages."""
from __future__ import annotations

import json
import math
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import averis
from conftest import FIXTURES, FLAG_SETS, first_difference, options_of, read_packed, run_quant

SHAPES = [(1, 1), (3, 17), (16, 16), (37, 40), (33, 300)]


def make_input(shape: tuple, dtype: str, seed: int) -> np.ndarray:
    """A mean-biased tensor with zeros, tiny values and outliers; dtype
    float32, float16, or bf16 (uint16 bits, as the CLI reads '<u2')."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    x = rng.standard_normal(shape) * 0.5 + rng.uniform(-3, 3, size=cols)
    x[rng.random(shape) < 0.05] = 0.0
    x[rng.random(shape) < 0.03] *= 1e-6
    x[rng.random(shape) < 0.02] *= 80.0
    x = x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype == "bf16":
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x


def check_same_as_cli(q: averis.Quantized, deq_cli: np.ndarray, packed: bytes) -> None:
    ref = read_packed(packed)
    for name in ("codes", "scales"):
        d = first_difference(getattr(q, name), ref[name])
        assert d is None, f"{name}: {d}"
    assert np.float32(q.amax).tobytes() == np.float32(ref["amax"]).tobytes(), f"amax {q.amax} vs {ref['amax']}"
    if ref["mean"] is not None:
        d = first_difference(q.mean, ref["mean"].astype(np.float32))
        assert d is None, f"mean: {d}"
    else:
        assert q.mean is None
    assert q.packed() == packed, "packed bytes differ from the CLI's file"
    d = first_difference(averis.dequantize(q), deq_cli.astype(np.float32))
    assert d is None, f"dequantized: {d}"


# every option set on every shape in float32; the narrow inputs on fewer
CLI_CASES = [(f, s, "float32") for f in FLAG_SETS for s in SHAPES] + \
    [(f, s, t) for f in FLAG_SETS[:6:2] + FLAG_SETS[8:9] for s in SHAPES[2:4] for t in ("float16", "bf16")]


@pytest.mark.parametrize("flags,shape,dtype", CLI_CASES,
                         ids=[f"{' '.join(f) or 'plain'}-{s[0]}x{s[1]}-{t}" for f, s, t in CLI_CASES])
def test_quantize_matches_cli(averis_bin: Path, tmp_path: Path, flags: list, shape: tuple, dtype: str) -> None:
    x = make_input(shape, dtype, seed=zlib.crc32(repr((flags, shape, dtype)).encode()))
    deq, packed = run_quant(averis_bin, x, flags, tmp_path)
    q = averis.quantize(x, **options_of(flags))
    assert q.shape == shape and q.codes.dtype == np.uint8 and q.scales.dtype == np.uint8
    check_same_as_cli(q, deq, packed)


def manifest() -> list:
    rows = []
    for line in (FIXTURES / "nvfp4" / "MANIFEST").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            case, variant, *flags = line.split()
            rows.append((case, variant, flags))
    return rows


@pytest.mark.parametrize("case,variant,flags", manifest(), ids=lambda v: v if isinstance(v, str) else None)
def test_quantize_matches_pytorch_fixtures(case: str, variant: str, flags: list) -> None:
    """The fixtures written by tests/gen_fixtures.py (an independent PyTorch
    implementation): the packed bytes and the dequantized values."""
    d = FIXTURES / "nvfp4"
    q = averis.quantize(np.load(d / f"{case}.in.npy"), **options_of(flags))
    check_same_as_cli(q, np.load(d / f"{case}.{variant}.deq.npy"), (d / f"{case}.{variant}.packed").read_bytes())


def test_exact_values_round_trip() -> None:
    """7·e2m1·2^k (k = 0..-5) is exact in NVFP4 with 1x16 blocks: amax 42
    makes S_enc = 64 and each block's scale 448·2^k an E4M3 value; so is a
    16x16 tile of 7·e2m1."""
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6, 0], np.float32)
    x = np.stack([7 * grid * np.float32(2.0 ** -k) for k in range(6)])
    tile = np.stack([7 * np.roll(grid, r) for r in range(16)])  # one 16x16 tile of amax 42
    for block, x in (("1x16", x), ("16x16", tile)):
        q = averis.quantize(x, block=block)
        d = first_difference(q.dequantize(), x)
        assert d is None, f"{block}: {d}"
        assert q.amax == 42.0 and q.stats["n_flushed"] == 0


def test_layouts_do_not_change_bits() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 70)).astype(np.float32)
    ref = averis.quantize(x[:, ::2].copy(), split="mean")
    strided = averis.quantize(x[:, ::2], split="mean")
    big_endian = averis.quantize(x[:, ::2].astype(">f4"), split="mean")
    for q in (strided, big_endian):
        assert q.packed() == ref.packed()


def test_sr_seed_and_stream() -> None:
    x = make_input((32, 64), "float32", 3)
    base = averis.quantize(x, sr=True, seed=9, stream=0)
    assert averis.quantize(x, sr=True, seed=9, stream=0).packed() == base.packed(), "SR is not deterministic"
    assert not np.array_equal(averis.quantize(x, sr=True, seed=9, stream=1).codes, base.codes), "stream unused"
    assert not np.array_equal(averis.quantize(x, sr=True, seed=10).codes, base.codes), "seed unused"
    assert not np.array_equal(averis.quantize(x).codes, base.codes), "SR equals RN"


def test_stats_count_nonfinite() -> None:
    x = np.ones((2, 16), np.float32)
    x[0, 3], x[1, 5] = np.nan, np.inf
    st = averis.quantize(x).stats
    assert st["n_nan"] == 1 and st["n_inf"] == 1 and st["n"] == 32


# ---------------------------------------------------------------- analysis

ANALYSIS_KEYS = ["R", "cos_mu_v1", "e_mean", "e_spike", "e_tail", "sigma1", "rho_median", "rho_frac_half",
                 "spike_k", "top_count"]


def test_analyze_matches_numpy_reference() -> None:
    """tests/fixtures/analysis/expected.json (tests/ref_analysis.py: numpy,
    fp64, exact SVD), with the C test's tolerances."""
    expected = json.loads((FIXTURES / "analysis" / "expected.json").read_text())
    assert len(expected) >= 5
    for name, want in ((k, v) for k, v in expected.items() if not k.startswith("_")):
        got = averis.analyze(np.load(FIXTURES / "nvfp4" / f"{name}.in.npy"))
        for k in ANALYSIS_KEYS:
            if k not in want:
                continue
            tol = 1e-6 * abs(want[k]) if k in ("sigma1", "rho_median") else (0 if k in ("spike_k", "top_count",
                                                                                        "rho_frac_half") else 1e-6)
            assert abs(got[k] - want[k]) <= tol, f"{name}: {k} = {got[k]!r}, numpy {want[k]!r}"
        assert abs(got["e_mean"] + got["e_spike"] + got["e_tail"] - 1) < 1e-9


def test_analyze_matches_cli(averis_bin: Path, tmp_path: Path) -> None:
    x = make_input((64, 48), "float32", 5)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([str(averis_bin), "analyze", "--npy", str(tmp_path / "x.npy"), "--json",
                        str(tmp_path / "a.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = json.loads((tmp_path / "a.json").read_text())
    got = averis.analyze(x)
    assert set(got) == set(want), f"keys differ: {set(got) ^ set(want)}"
    for k, v in want.items():  # the CLI prints %.9g
        assert math.isclose(got[k], v, rel_tol=1e-8, abs_tol=1e-300), f"{k}: {got[k]!r} vs CLI {v!r}"


def test_analyze_closed_forms() -> None:
    mu = np.linspace(-2, 3, 32, dtype=np.float32)
    same = averis.analyze(np.tile(mu, (40, 1)))  # every token is the mean
    assert abs(same["R"] - 1) < 1e-7 and abs(same["cos_mu_v1"] - 1) < 1e-7 and abs(same["e_mean"] - 1) < 1e-7
    assert abs(same["mean_norm"] - float(np.linalg.norm(mu.astype(np.float64)))) < 1e-5
    signs = np.where(np.arange(40) % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None]
    centred = averis.analyze(signs * mu)  # mean zero: no mean energy, one spike direction
    assert centred["R"] == 0 and centred["e_mean"] == 0 and abs(centred["e_spike"] - 1) < 1e-6


# ------------------------------------------------------------ linear layer

def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm((a - ref).astype(np.float64)) / np.linalg.norm(ref.astype(np.float64)))


def deq(x: np.ndarray, **kw: object) -> np.ndarray:
    return averis.quantize(x, **kw).dequantize().astype(np.float64)


@pytest.fixture(scope="module")
def xwd() -> tuple:
    rng = np.random.default_rng(7)
    l, m, n = 48, 64, 32
    x = (rng.standard_normal((l, m)) + 0.7).astype(np.float32)
    w = (0.05 * rng.standard_normal((n, m))).astype(np.float32)
    d = (1e-3 * rng.standard_normal((l, n)) + 2e-4).astype(np.float32)
    return x, w, d


def test_linear_fp32_is_the_matmul(xwd: tuple) -> None:
    x, w, d = xwd
    assert rel_err(averis.linear_forward(x, w, "fp32"), x.astype(np.float64) @ w.T) < 1e-6
    dx, dw = averis.linear_backward(x, w, d, "fp32")
    assert rel_err(dx, d.astype(np.float64) @ w) < 1e-6 and rel_err(dw, d.T.astype(np.float64) @ x) < 1e-6


@pytest.mark.parametrize("recipe", ["nvfp4,sr=0", "nvfp4", "averis,sr=0", "averis"])
def test_linear_is_the_product_of_quantized_operands(xwd: tuple, recipe: str) -> None:
    """forward X̄·W̄ᵀ, dgrad D̄·W̄, wgrad D̄ᵀ·X̄ (transposed copies quantized
    along tokens), the operands made by averis.quantize; SR of D on streams
    2s (dgrad) and 2s+1 (wgrad) under the recipe's seed (0)."""
    x, w, d = xwd
    split = "mean" if recipe.startswith("averis") else None
    sr = not recipe.endswith("sr=0")
    s = 5
    wq = deq(w, block="16x16")
    y = averis.linear_forward(x, w, recipe)
    assert rel_err(y, deq(x, split=split) @ wq.T) < 1e-6
    dx, dw = averis.linear_backward(x, w, d, recipe, sr_stream=s)
    assert rel_err(dx, deq(d, split=split, sr=sr, stream=2 * s) @ wq) < 1e-6
    if split is None:  # the split recipes add rank-one terms in another order: checked by tests/test_qlinear.c
        want_dw = deq(d.T.copy(), sr=sr, stream=2 * s + 1) @ deq(x.T.copy()).T
        assert rel_err(dw, want_dw) < 1e-6
    else:
        assert rel_err(dw, d.T.astype(np.float64) @ x) < 0.2
    if sr:
        dx2, _ = averis.linear_backward(x, w, d, recipe, sr_stream=s + 1)
        assert not np.array_equal(dx, dx2), "the SR stream does not reach the dgrad"


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("bad,exc,match", [
    (np.zeros((2, 3, 16), np.float32), ValueError, "expected a 2-D array, got 3 dimensions"),
    (np.zeros(16, np.float32), ValueError, "expected a 2-D array, got 1 dimensions"),
    (np.zeros((2, 16), np.int32), TypeError, "dtype int32 not supported"),
    (np.zeros((2, 16), np.float64), TypeError, "dtype float64 not supported"),
    (np.zeros((0, 16), np.float32), ValueError, "empty array"),
    ([[1.0, 2.0]], TypeError, "expected a numpy array"),
])
def test_bad_inputs(bad: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        averis.quantize(bad)
    with pytest.raises(exc, match=match):
        averis.analyze(bad)


def test_bad_options() -> None:
    x = np.ones((2, 16), np.float32)
    with pytest.raises(ValueError, match="block must be"):
        averis.quantize(x, block="2x16")
    with pytest.raises(ValueError, match="split takes"):
        averis.quantize(x, split="median")
    with pytest.raises(ValueError, match="mean_fp4 needs"):
        averis.quantize(x, mean_fp4=True)
    with pytest.raises(TypeError, match="expected a Quantized"):
        averis.dequantize(x)


def test_library_messages() -> None:
    """Errors found by the C library reach Python with its message."""
    with pytest.raises(ValueError, match="unknown recipe 'nvfp5'"):
        averis.parse_recipe("nvfp5")
    with pytest.raises(ValueError, match="wblock"):
        averis.parse_recipe("averis,wblock=3x3")
    assert averis.parse_recipe("averis-rht,seed=3")["seed"] == 3
    x, w = np.ones((4, 20), np.float32), np.ones((16, 20), np.float32)
    with pytest.raises(ValueError, match="multiple"):
        averis.linear_forward(x, w, "nvfp4")  # m = 20: the FP4 GEMM's K must be a multiple of 16
    assert averis.linear_forward(x, w, "fp32")[0, 0] == 20.0
