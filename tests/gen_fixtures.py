#!/usr/bin/env python3
"""Independent NVFP4 reference in PyTorch: writes the fixtures that the C
tests compare bit for bit.

    python3 tests/gen_fixtures.py tests/fixtures/nvfp4

For each case it writes CASE.in.npy and, per variant, CASE.VARIANT.packed
(the layout of include/averis/quant.h) and CASE.VARIANT.deq.npy (what
`averis quant` writes), plus MANIFEST (case, variant, the CLI flags).

The quantizer follows ../shared/NVFP4.md with PyTorch's own pieces: the E4M3
cast is torch.float8_e4m3fn (c10's conversion), E2M1 is the comparison
ladder of TransformerEngine's reference, block/tile reductions are tensor
ops. Only Philox (pure Python ints) and the RHT butterfly order are spelled
out, because the contract fixes their arithmetic.
"""
import os
import struct
import sys

import numpy as np
import torch

F32 = torch.float32
FLT_MAX = torch.finfo(F32).max
SIGNS = torch.tensor([1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1], dtype=F32)
SPLIT_CHUNK = 256
VERSION = 1

# ------------------------------------------------------------------ Philox
M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK, p1 & MASK, ((p0 >> 32) ^ c3 ^ k1) & MASK, p0 & MASK
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return c0, c1, c2, c3


def sr_u24(seed, stream, n):
    out = np.empty(n, dtype=np.uint32)
    key = (seed & MASK, seed >> 32)
    for q in range((n + 3) // 4):
        r = philox((q & MASK, q >> 32, stream & MASK, stream >> 32), key)
        for k in range(4):
            if 4 * q + k < n:
                out[4 * q + k] = r[k] >> 8
    return torch.from_numpy(out.astype(np.int64))


# --------------------------------------------------------------------- RHT
def butterflies(v):
    """In place over the last dim (16): stages h = 1, 2, 4, 8, (a, b) -> (a+b, a-b)."""
    shp = v.shape
    for h in (1, 2, 4, 8):
        w = v.reshape(*shp[:-1], 16 // (2 * h), 2, h)
        a, b = w[..., 0, :], w[..., 1, :]
        v = torch.stack((a + b, a - b), dim=-2).reshape(shp)
    return v


def rht(g):  # g [..., 16]
    return torch.tensor(0.25, dtype=F32) * butterflies(g * SIGNS)


def rht_inv(y):
    return (torch.tensor(0.25, dtype=F32) * butterflies(y)) * SIGNS


# ---------------------------------------------------------------- E2M1 RN/SR
MAGS = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=F32)


def e2m1_rn(y):
    a = y.abs()
    idx = torch.full(y.shape, 7, dtype=torch.int64)  # > 5, inf, NaN
    idx = torch.where(a <= 5.0, 6, idx)
    idx = torch.where(a < 3.5, 5, idx)
    idx = torch.where(a <= 2.5, 4, idx)
    idx = torch.where(a < 1.75, 3, idx)
    idx = torch.where(a <= 1.25, 2, idx)
    idx = torch.where(a < 0.75, 1, idx)
    idx = torch.where(a <= 0.25, 0, idx)
    return idx | torch.where(y < 0, 8, 0)


def e2m1_sr(y, u24):
    a = y.abs()
    lo = torch.zeros(y.shape, dtype=torch.int64)
    for k in range(1, 8):
        lo = torch.where(a >= MAGS[k], k, lo)
    lo_c = lo.clamp(max=6)
    frac = (a - MAGS[lo_c]) / (MAGS[lo_c + 1] - MAGS[lo_c])
    up = (u24.to(F32) * torch.tensor(2.0 ** -24, dtype=F32)) < frac
    idx = torch.where(up, lo_c + 1, lo_c)
    idx = torch.where(a >= 6.0, 7, idx)
    idx = torch.where(torch.isnan(y), 7, idx)
    sign = torch.where((y < 0) & ~torch.isnan(y), 8, 0)
    return idx | sign


def e2m1_val(code):
    v = MAGS[code & 7]
    return torch.where((code & 8) != 0, -v, v)


# ---------------------------------------------------------------- quantize
def nan_abs(x):
    return torch.where(torch.isnan(x), torch.zeros_like(x), x.abs())


def global_scales(amax):
    s_enc = torch.tensor(448.0 * 6.0, dtype=F32) / amax
    s_enc = torch.minimum(s_enc, torch.tensor(FLT_MAX, dtype=F32))
    if amax.item() == 0.0 or s_enc.item() == 0.0:
        s_enc = torch.tensor(1.0, dtype=F32)
    return s_enc, torch.tensor(1.0, dtype=F32) / s_enc


def quantize(xq, tile, sr=None):
    """xq [rows, cp] fp32, the quantizer input. Returns codes, scale codes, amax."""
    rows, cp = xq.shape
    nb = cp // 16
    amax = nan_abs(xq).max()
    s_enc, s_dec = global_scales(amax)
    blocks = nan_abs(xq).reshape(rows, nb, 16).amax(-1)  # [rows, nb]
    if tile:
        rt = (rows + 15) // 16
        padded = torch.zeros(rt * 16, nb, dtype=F32)
        padded[:rows] = blocks
        bam = padded.reshape(rt, 16, nb).amax(1)  # [rt, nb]
    else:
        bam = blocks
    c = s_enc * (torch.tensor(1.0, dtype=F32) / torch.tensor(6.0, dtype=F32))
    s8 = torch.clamp(bam * c, max=448.0).to(torch.float8_e4m3fn)
    s_dec_b = s8.to(F32)
    enc = torch.minimum(torch.tensor(1.0, dtype=F32) / (s_dec_b * s_dec), torch.tensor(FLT_MAX, dtype=F32))
    if tile:
        enc_rows = enc.repeat_interleave(16, dim=0)[:rows]
        sdb_rows = s_dec_b.repeat_interleave(16, dim=0)[:rows]
    else:
        enc_rows, sdb_rows = enc, s_dec_b
    y = xq * enc_rows.repeat_interleave(16, dim=1)
    if sr is None:
        q = e2m1_rn(y)
    else:
        seed, stream = sr
        q = e2m1_sr(y, sr_u24(seed, stream, rows * cp).reshape(rows, cp))
    deq = (e2m1_val(q) * sdb_rows.repeat_interleave(16, dim=1)) * s_dec
    return q, s8.view(torch.uint8), amax, deq


def colmean(x):
    rows, cols = x.shape
    total = torch.zeros(cols, dtype=torch.float64)
    for r0 in range(0, rows, SPLIT_CHUNK):
        part = x[r0:r0 + SPLIT_CHUNK].double().cumsum(0)[-1]  # sequential within the chunk
        total = total + part
    return (total / rows).to(F32)


def pad_cols(x, cp):
    out = torch.zeros(x.shape[0], cp, dtype=F32)
    out[:, :x.shape[1]] = x
    return out


def roundtrip(x, tile=False, use_rht=False, split=False, mean_fp4=False, sr_seed=None):
    rows, cols = x.shape
    cp = (cols + 15) // 16 * 16
    mean = mean_back = None
    xin = x
    if split:
        mean = colmean(x)
        xin = x - mean
        mean_back = mean
        if mean_fp4:
            mq = pad_cols(mean.reshape(1, cols), cp)
            _, _, _, mdeq = quantize(mq, False)
            mean_back = mdeq[0, :cols]
    xq = pad_cols(xin, cp)
    if use_rht:
        xq = rht(xq.reshape(rows, cp // 16, 16)).reshape(rows, cp)
    q, s8, amax, deq = quantize(xq, tile, None if sr_seed is None else (sr_seed, 0))
    if use_rht:
        deq = rht_inv(deq.reshape(rows, cp // 16, 16)).reshape(rows, cp)
    out = deq[:, :cols]
    if mean_back is not None:
        out = out + mean_back
    flags = (1 if tile else 0) | (2 if use_rht else 0) | (4 if split else 0) | (8 if split and mean_fp4 else 0) | (16 if sr_seed is not None else 0)
    qn = q.to(torch.uint8)
    packed_codes = (qn[:, 0::2] | (qn[:, 1::2] << 4)).contiguous().numpy().tobytes()
    blob = b"AVNVFP4\0" + struct.pack("<IIqqfI", VERSION, flags, rows, cols, amax.item(), 0)
    blob += packed_codes + s8.contiguous().numpy().tobytes()
    if mean_back is not None:
        blob += mean_back.contiguous().numpy().astype("<f4").tobytes()
    return out, blob


# ------------------------------------------------------------------- cases
def make_cases():
    g = np.random.default_rng(20261123)
    cases = {}
    cases["normal"] = g.standard_normal((32, 64)).astype(np.float32)
    mb = (0.05 * g.standard_normal((37, 40))).astype(np.float32)
    mb[:, ::7] += 8.0
    mb += 0.5
    cases["meanbias"] = mb.astype(np.float32)
    adv = np.zeros((32, 48), dtype=np.float32)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], dtype=np.float32)
    adv[1] = np.resize(np.concatenate([ties, -ties]), 48)           # E2M1 ties at scale 1
    adv[2, ::16] = 6.0; adv[2, 1::16] = 3.0                           # exact 6·scale maxima
    adv[3] = g.standard_normal(48).astype(np.float32) * np.float32(1e-39)  # subnormals
    adv[4] = (g.standard_normal(48) * 10.0 ** g.integers(-30, 30, 48)).astype(np.float32)  # huge range
    adv[5, 7] = 1e4                                                   # one huge element
    adv[6:] = g.standard_normal((26, 48)).astype(np.float32)
    cases["adversarial"] = adv
    nf = g.standard_normal((16, 32)).astype(np.float32)
    nf[0, 3] = np.nan; nf[5, 9] = np.inf; nf[9, 30] = -np.inf
    cases["nonfinite"] = nf
    cases["tiny"] = (g.standard_normal((16, 32)) * 1e-44).astype(np.float32)
    cases["tall"] = (g.standard_normal((300, 20)) + 3.0).astype(np.float32)  # > one split chunk
    bf = g.standard_normal((32, 32)).astype(np.float32)
    cases["bf16"] = (torch.from_numpy(bf).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    cases["f16"] = g.standard_normal((24, 48)).astype(np.float16)
    return cases


VARIANTS = [
    ("1x16", dict(), []),
    ("16x16", dict(tile=True), ["--block", "16x16"]),
    ("rht", dict(use_rht=True), ["--rht"]),
    ("split", dict(split=True), ["--split", "mean"]),
    ("splitfp4", dict(split=True, mean_fp4=True), ["--split", "mean", "--mean-fp4"]),
    ("splitrht", dict(split=True, use_rht=True), ["--split", "mean", "--rht"]),
    ("sr", dict(sr_seed=1234), ["--sr", "--seed", "1234"]),
    ("16x16sr", dict(tile=True, sr_seed=7), ["--block", "16x16", "--sr", "--seed", "7"]),
]


def to_f32(arr):
    if arr.dtype == np.uint16:
        return torch.from_numpy(arr.astype(np.int32) << 16).view(F32).reshape(arr.shape).clone()
    return torch.from_numpy(arr.astype(np.float32))


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/nvfp4"
    os.makedirs(outdir, exist_ok=True)
    manifest = [f"# averis NVFP4 fixtures v{VERSION}, torch {torch.__version__}: case variant flags..."]
    for name, arr in make_cases().items():
        np.save(os.path.join(outdir, f"{name}.in.npy"), arr)
        x = to_f32(arr)
        for vname, kw, flags in VARIANTS:
            out, blob = roundtrip(x, **kw)
            np.save(os.path.join(outdir, f"{name}.{vname}.deq.npy"), out.numpy().astype("<f4"))
            with open(os.path.join(outdir, f"{name}.{vname}.packed"), "wb") as f:
                f.write(blob)
            manifest.append(" ".join([name, vname] + flags))
    with open(os.path.join(outdir, "MANIFEST"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    print(f"wrote {len(manifest) - 1} fixtures to {outdir}")


if __name__ == "__main__":
    main()
