#!/usr/bin/env python3
"""ref_analysis.py OUT.json — the mean-bias metrics of include/averis/analysis.h
computed independently with numpy (fp64, exact SVD) for the tensors of
tests/fixtures/nvfp4/, as the reference for tests/test_analysis.c.
(The NVFP4 error columns are not recomputed here: the quantizer itself is
checked bit for bit against PyTorch by the nvfp4 fixtures.)"""
import json, math, sys

import numpy as np

NAMES = ["meanbias", "normal", "tall", "adversarial", "tiny"]


def metrics(X):
    X = X.astype(np.float64)
    l, m = X.shape
    mu = X.mean(axis=0)
    total = float((X * X).sum())
    R = float(np.linalg.norm(mu) / math.sqrt(total / l))
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    cos = float(abs(mu @ vt[0]) / np.linalg.norm(mu))
    k = max(1, math.ceil(0.01 * min(l, m)))
    sc = np.linalg.svd(X - mu, compute_uv=False)
    e_mean = l * float(mu @ mu) / total
    e_spike = float((sc[:k] ** 2).sum()) / total
    flat = np.abs(X).ravel()
    cnt = math.ceil(0.001 * flat.size)
    thr = np.sort(flat)[::-1][cnt - 1]
    rho = []
    for i, x in enumerate(X.ravel()):
        if len(rho) == cnt:
            break
        if abs(x) >= thr:
            rho.append(mu[i % m] ** 2 / x ** 2)
    rho = np.array(rho)
    return {"R": R, "sigma1": float(s[0]), "cos_mu_v1": cos, "spike_k": k, "e_mean": e_mean, "e_spike": e_spike,
            "e_tail": 1.0 - e_mean - e_spike, "top_count": len(rho), "rho_median": float(np.median(rho)),
            "rho_frac_half": float((rho > 0.5).mean())}


if __name__ == "__main__":
    out = {n: metrics(np.load(f"tests/fixtures/nvfp4/{n}.in.npy")) for n in NAMES}
    out["_version"] = {"numpy": np.__version__, "fixture_version": 1}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {sys.argv[1]}")
