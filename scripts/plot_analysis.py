#!/usr/bin/env python3
"""plot_analysis.py OUTDIR RUN.csv [RUN2.csv ...] — plots of the mean-bias
rows written by `averis train --analyze-every` (columns step,layer,kind,...).
A run's label is its file name without "analysis_" and ".csv". Writes:
  OUTDIR/meanbias_depth.png   R and cos(μ,v₁) vs depth at the last step, per kind
  OUTDIR/meanbias_steps.png   R and cos(μ,v₁) vs training step (mean over layers), per kind
  OUTDIR/energy_split.png     mean / spike / tail energy per (layer, kind), last step, first run
  OUTDIR/quant_error.png      NVFP4 flushed share and relative MSE, plain / split / RHT / both
and prints the summary table the report quotes. Needs matplotlib."""
import csv, os, sys
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ACT = ["attn_in", "attn_out", "ffn_in", "ffn_down_in"]
GRAD = ["grad_attn_out", "grad_ffn_gate", "grad_ffn_up", "grad_ffn_down"]
QV = ["plain", "split", "rht", "split_rht"]


def load(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            d = {k: (v if k == "kind" else float(v)) for k, v in r.items()}
            rows.append(d)
    return rows


def label(path):
    b = os.path.basename(path)
    return b.replace("analysis_", "").replace(".csv", "")


def finish(fig, out, fname):
    fig.tight_layout()
    fig.savefig(os.path.join(out, fname), dpi=110)
    plt.close(fig)


def line_pair(axes, titles, xlabel):
    """two line plots side by side: titles, x label, grid, the legend on the first"""
    for a, t in zip(axes, titles):
        a.set_title(t)
        a.set_xlabel(xlabel)
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    runs = {label(p): load(p) for p in paths}
    styles = ["-", "--", ":", "-."]
    # 1. vs depth, last step
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ri, (name, rows) in enumerate(runs.items()):
        last = max(r["step"] for r in rows)
        for ki, kind in enumerate(ACT + GRAD):
            pts = sorted((r["layer"], r["R"], r["cos_mu_v1"]) for r in rows if r["step"] == last and r["kind"] == kind)
            if not pts:
                continue
            c = f"C{ki}"
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], styles[ri % 4], color=c, marker="o", ms=3,
                         label=f"{kind} ({name})")
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], styles[ri % 4], color=c, marker="o", ms=3)
    line_pair(axes, ["mean-energy ratio R vs depth (last step)", "|cos(μ, v₁)| vs depth (last step)"], "layer")
    finish(fig, out, "meanbias_depth.png")
    # 2. vs step, mean over layers
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ri, (name, rows) in enumerate(runs.items()):
        for ki, kind in enumerate(ACT + GRAD):
            by = defaultdict(list)
            for r in rows:
                if r["kind"] == kind:
                    by[r["step"]].append(r)
            steps = sorted(by)
            if not steps:
                continue
            R = [sum(r["R"] for r in by[s]) / len(by[s]) for s in steps]
            C = [sum(r["cos_mu_v1"] for r in by[s]) / len(by[s]) for s in steps]
            axes[0].plot(steps, R, styles[ri % 4], color=f"C{ki}", label=f"{kind} ({name})")
            axes[1].plot(steps, C, styles[ri % 4], color=f"C{ki}")
    line_pair(axes, ["R over training (mean over layers)", "|cos(μ, v₁)| over training (mean over layers)"], "step")
    finish(fig, out, "meanbias_steps.png")
    # 3. energy split, first run, last step
    name, rows = next(iter(runs.items()))
    last = max(r["step"] for r in rows)
    sel = sorted((r for r in rows if r["step"] == last), key=lambda r: ((ACT + GRAD).index(r["kind"]), r["layer"]))
    fig, ax = plt.subplots(figsize=(13, 4.5))
    x = range(len(sel))
    em, es, et = [r["e_mean"] for r in sel], [r["e_spike"] for r in sel], [r["e_tail"] for r in sel]
    ax.bar(x, em, label="mean")
    ax.bar(x, es, bottom=em, label="spike (top 1% dirs)")
    ax.bar(x, et, bottom=[a + b for a, b in zip(em, es)], label="tail")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{r['kind']}.{int(r['layer'])}" for r in sel], rotation=90, fontsize=6)
    ax.set_title(f"energy split of X ({name}, step {int(last)})")
    ax.legend()
    finish(fig, out, "energy_split.png")
    # 4. quantization error per kind (mean over layers), last step, each run
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    kinds = ACT + GRAD
    width = 0.8 / (len(QV) * len(runs))
    for ri, (name, rows) in enumerate(runs.items()):
        last = max(r["step"] for r in rows)
        for qi, q in enumerate(QV):
            fl, ms = [], []
            for kind in kinds:
                sel = [r for r in rows if r["step"] == last and r["kind"] == kind]
                fl.append(sum(r[f"flushed_{q}"] for r in sel) / max(len(sel), 1))
                ms.append(sum(r[f"relmse_{q}"] for r in sel) / max(len(sel), 1))
            off = (ri * len(QV) + qi) * width - 0.4
            axes[0].bar([i + off for i in range(len(kinds))], fl, width, label=f"{q} ({name})", color=f"C{qi}",
                        alpha=1.0 if ri == 0 else 0.5)
            axes[1].bar([i + off for i in range(len(kinds))], ms, width, color=f"C{qi}", alpha=1.0 if ri == 0 else 0.5)
    axes[0].set_title("NVFP4: share of nonzeros flushed to zero (mean over layers)")
    axes[1].set_title("NVFP4: relative MSE (mean over layers)")
    for a in axes:
        a.set_xticks(range(len(kinds)))
        a.set_xticklabels(kinds, rotation=30, fontsize=7)
        a.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=6, ncol=2)
    finish(fig, out, "quant_error.png")
    # summary table
    print("| run | kind | R at step 0 | R last | cos last | e_mean last | flushed plain → split | relMSE plain → split |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in runs.items():
        last = max(r["step"] for r in rows)
        first = min(r["step"] for r in rows)
        for kind in kinds:
            s0 = [r for r in rows if r["step"] == first and r["kind"] == kind]
            sl = [r for r in rows if r["step"] == last and r["kind"] == kind]
            if not sl:
                continue
            avg = lambda sel, k: sum(r[k] for r in sel) / len(sel)
            print(f"| {name} | {kind} | {avg(s0, 'R'):.3f} | {avg(sl, 'R'):.3f} | {avg(sl, 'cos_mu_v1'):.3f} | "
                  f"{avg(sl, 'e_mean'):.3f} | {avg(sl, 'flushed_plain'):.3f} → {avg(sl, 'flushed_split'):.3f} | "
                  f"{avg(sl, 'relmse_plain'):.2e} → {avg(sl, 'relmse_split'):.2e} |")
    print(f"plots: {out}/meanbias_depth.png, meanbias_steps.png, energy_split.png, quant_error.png")


if __name__ == "__main__":
    main()
