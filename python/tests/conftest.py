"""Shared helpers of the averis package tests: the repository, the CLI
(`averis quant`, the reference the package must match bit for bit) and the
packed-file reader."""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# `averis quant` option sets the package must reproduce
FLAG_SETS = [
    [],
    ["--block", "16x16"],
    ["--rht"],
    ["--split", "mean"],
    ["--split", "mean", "--mean-fp4"],
    ["--split", "mean", "--rht"],
    ["--sr", "--seed", "1234"],
    ["--block", "16x16", "--sr", "--seed", "7"],
    ["--split", "mean", "--sr", "--seed", "5"],
    ["--rht", "--sr", "--block", "16x16"],
]


@pytest.fixture(scope="session")
def averis_bin() -> Path:
    """The CLI built by `make` (AVERIS_BIN overrides); a missing CLI fails."""
    path = Path(os.environ.get("AVERIS_BIN", REPO / "build" / "averis"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path}: the averis CLI is missing; run `make` first (or set AVERIS_BIN)")
    return path


def read_packed(data: bytes) -> Dict[str, object]:
    """Parses the packed file of include/averis/quant.h (independently of
    the package): header fields, codes, scales and the split's mean."""
    assert data[:8] == b"AVNVFP4\0", "bad magic"
    version, flags, rows, cols, amax, zero = struct.unpack_from("<IIqqfI", data, 8)
    cp = (cols + 15) // 16 * 16
    nb = cp // 16
    ncodes = rows * cp // 2
    nscales = ((rows + 15) // 16 if flags & 1 else rows) * nb
    off = 40
    codes = np.frombuffer(data, np.uint8, ncodes, off).reshape(rows, cp // 2)
    off += ncodes
    scales = np.frombuffer(data, np.uint8, nscales, off).reshape(-1, nb)
    off += nscales
    mean = None
    if flags & 4:
        mean = np.frombuffer(data, "<f4", cols, off)
        off += 4 * cols
    assert off == len(data), f"packed file has {len(data) - off} trailing bytes"
    return dict(version=version, flags=flags, rows=rows, cols=cols, amax=amax, reserved=zero, codes=codes,
                scales=scales, mean=mean)


def run_quant(averis_bin: Path, x: np.ndarray, flags: List[str], tmp: Path) -> tuple:
    """Runs `averis quant IN.npy --out OUT.npy --packed P FLAGS` on x and
    returns (the dequantized array, the packed bytes)."""
    inp, out, packed = tmp / "in.npy", tmp / "out.npy", tmp / "q.packed"
    np.save(inp, x)
    r = subprocess.run([str(averis_bin), "quant", str(inp), "--out", str(out), "--packed", str(packed)] + flags,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"averis quant {' '.join(flags)} failed: {r.stderr}"
    return np.load(out), packed.read_bytes()


def options_of(flags: List[str]) -> Dict[str, object]:
    """The keyword arguments of averis.quantize for CLI flags."""
    kw: Dict[str, object] = {}
    it = iter(flags)
    for f in it:
        if f == "--block":
            kw["block"] = next(it)
        elif f == "--rht":
            kw["rht"] = True
        elif f == "--split":
            kw["split"] = next(it)
        elif f == "--mean-fp4":
            kw["mean_fp4"] = True
        elif f == "--sr":
            kw["sr"] = True
        elif f == "--seed":
            kw["seed"] = int(next(it))
        else:
            raise AssertionError(f"no keyword for {f}")
    return kw


def first_difference(a: np.ndarray, b: np.ndarray) -> Optional[str]:
    """None if a and b hold the same bytes, else where they first differ."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    ab, bb = a.view(np.uint8).reshape(-1), b.view(np.uint8).reshape(-1)
    diff = np.nonzero(ab != bb)[0]
    if diff.size == 0:
        return None
    i = int(diff[0]) // a.itemsize
    return f"{diff.size} bytes differ; first at element {np.unravel_index(i, a.shape)}: " \
           f"got {a.reshape(-1)[i]!r}, expected {b.reshape(-1)[i]!r}"
