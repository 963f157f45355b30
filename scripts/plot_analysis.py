#!/usr/bin/env python3
"""plot_analysis.py OUTDIR RUN.csv [RUN2.csv ...] — plots of the mean-bias
rows written by `averis train --analyze-every` (columns step,layer,kind,...).
A run's label is its file name without "analysis_" and ".csv". Writes:
  OUTDIR/meanbias_depth.png   R and cos(μ,v₁) vs depth at the last step, per kind
  OUTDIR/meanbias_steps.png   R and cos(μ,v₁) vs training step (mean over layers), per kind
  OUTDIR/energy_split.png     mean / spike / tail energy per (layer, kind), last step, first run
  OUTDIR/quant_error.png      NVFP4 flushed share and relative MSE, plain / split / RHT / both
and, in the paper's manner (issue 24; the GPU rows add resid_attn/resid_ffn,
grad_attn_q/k/v and grad_lm_head kinds):
  OUTDIR/R_heatmap_RUN.png    R over training, one row per (layer kind, depth)
  OUTDIR/cos_steps.png        cos(μ,v₁) over training, activations by depth third
  OUTDIR/top01_mean_share.png share of the top-0.1% magnitudes explained by the mean (ρ > 0.5)
  OUTDIR/flushed_steps.png    share flushed to zero: plain NVFP4 vs the Averis split
  OUTDIR/qerr_layers_RUN.png  each transform's NVFP4 error by layer over training
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
    sel = sorted((r for r in rows if r["step"] == last and r["kind"] in ACT + GRAD),
                 key=lambda r: ((ACT + GRAD).index(r["kind"]), r["layer"]))
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
    paper_plots(out, runs)
    print(f"plots: {out}/meanbias_depth.png, meanbias_steps.png, energy_split.png, quant_error.png, "
          "R_heatmap_*.png, cos_steps.png, top01_mean_share.png, flushed_steps.png, qerr_layers_*.png")


KIND_ORDER = ["attn_in", "attn_out", "resid_attn", "ffn_in", "ffn_down_in", "resid_ffn", "grad_attn_q", "grad_attn_k",
              "grad_attn_v", "grad_attn_out", "grad_ffn_gate", "grad_ffn_up", "grad_ffn_down", "grad_lm_head"]
ACT_ALL = ["attn_in", "attn_out", "resid_attn", "ffn_in", "ffn_down_in", "resid_ffn"]


def kinds_of(rows):
    ks = {r["kind"] for r in rows}
    return [k for k in KIND_ORDER if k in ks] + sorted(ks - set(KIND_ORDER))


def mean_by_step(rows, kinds, key, layers=None):
    by = defaultdict(list)
    for r in rows:
        if r["kind"] in kinds and (layers is None or int(r["layer"]) in layers):
            by[r["step"]].append(r[key])
    steps = sorted(by)
    return steps, [sum(by[s]) / len(by[s]) for s in steps]


def paper_plots(out, runs):
    styles = ["-", "--", ":", "-."]
    # R heatmap per run: rows (kind, layer), columns step
    for name, rows in runs.items():
        steps = sorted({r["step"] for r in rows})
        keys = [(k, l) for k in kinds_of(rows) for l in sorted({int(r["layer"]) for r in rows if r["kind"] == k})]
        val = {(r["kind"], int(r["layer"]), r["step"]): r["R"] for r in rows}
        grid = [[val.get((k, l, s), float("nan")) for s in steps] for k, l in keys]
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(steps) + 3), max(4, 0.11 * len(keys) + 1.5)))
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels([str(int(s)) for s in steps], rotation=90, fontsize=6)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{k}.{l}" for k, l in keys], fontsize=4 if len(keys) > 60 else 6)
        ax.set_xlabel("step")
        ax.set_title(f"mean-energy ratio R by layer kind and depth over training ({name})")
        fig.colorbar(im, ax=ax, fraction=0.03)
        finish(fig, out, f"R_heatmap_{name}.png")
    # cos(μ, v₁) over training, activations, by depth third
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ri, (name, rows) in enumerate(runs.items()):
        L = int(max(r["layer"] for r in rows if r["kind"] in ACT_ALL)) + 1 if rows else 1
        thirds = [("shallow", range(0, max(1, L // 3))), ("middle", range(L // 3, max(L // 3 + 1, 2 * L // 3))),
                  ("deep", range(2 * L // 3, L))]
        for ti, (tn, lay) in enumerate(thirds):
            st, c = mean_by_step(rows, ACT_ALL, "cos_mu_v1", set(lay))
            if st:
                axes[0].plot(st, c, styles[ri % 4], color=f"C{ti}", label=f"{tn} ({name})")
        for ki, k in enumerate([k for k in kinds_of(rows) if k.startswith("grad")]):
            st, c = mean_by_step(rows, [k], "cos_mu_v1")
            axes[1].plot(st, c, styles[ri % 4], color=f"C{ki}", label=f"{k} ({name})")
    line_pair(axes, ["|cos(μ, v₁)|, activations (mean over kinds) by depth", "|cos(μ, v₁)|, gradients by kind"], "step")
    axes[1].legend(fontsize=5, ncol=2)
    finish(fig, out, "cos_steps.png")
    # the share of the top-0.1% magnitudes explained by the mean (ρ > 0.5), and ρ's median
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ri, (name, rows) in enumerate(runs.items()):
        for ki, k in enumerate(kinds_of(rows)):
            st, v = mean_by_step(rows, [k], "rho_frac_half")
            axes[0].plot(st, v, styles[ri % 4], color=f"C{ki % 10}", label=f"{k} ({name})")
            st, v = mean_by_step(rows, [k], "rho_median")
            axes[1].plot(st, v, styles[ri % 4], color=f"C{ki % 10}")
    line_pair(axes, ["top 0.1% |x|: share with μ_j²/x² > 0.5", "top 0.1% |x|: median μ_j²/x²"], "step")
    axes[0].legend(fontsize=5, ncol=2)
    finish(fig, out, "top01_mean_share.png")
    # flushed share: plain NVFP4 vs the split, activations and gradients
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ri, (name, rows) in enumerate(runs.items()):
        acts = [k for k in kinds_of(rows) if not k.startswith("grad")]
        grads = [k for k in kinds_of(rows) if k.startswith("grad")]
        for ai, (ks, title) in enumerate([(acts, "activations"), (grads, "gradients")]):
            for qi, q in enumerate(["plain", "split"]):
                st, v = mean_by_step(rows, ks, f"flushed_{q}")
                axes[ai].plot(st, v, styles[ri % 4], color=f"C{qi}",
                              label=f"{'nvfp4' if q == 'plain' else 'averis split'} ({name})")
            axes[ai].set_title(f"share of nonzeros flushed to zero, {title}")
    line_pair(axes, [axes[0].get_title(), axes[1].get_title()], "step")
    finish(fig, out, "flushed_steps.png")
    # each transform's NVFP4 error by layer over training, per run
    for name, rows in runs.items():
        steps = sorted({r["step"] for r in rows})
        layers = sorted({int(r["layer"]) for r in rows})
        fig, axes = plt.subplots(2, len(QV), figsize=(4 * len(QV), 6.5), squeeze=False)
        for gi, (gname, pred) in enumerate([("activations", lambda k: not k.startswith("grad")),
                                            ("gradients", lambda k: k.startswith("grad"))]):
            for qi, q in enumerate(QV):
                cell = defaultdict(list)
                for r in rows:
                    if pred(r["kind"]):
                        cell[(int(r["layer"]), r["step"])].append(r[f"relmse_{q}"])
                grid = [[(sum(cell[(l, s)]) / len(cell[(l, s)])) if cell.get((l, s)) else float("nan") for s in steps]
                        for l in layers]
                ax = axes[gi][qi]
                im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
                ax.set_title(f"{gname}: relMSE {q}", fontsize=8)
                ax.set_xticks(range(len(steps)))
                ax.set_xticklabels([str(int(s)) for s in steps], rotation=90, fontsize=5)
                ax.set_yticks(range(len(layers)))
                ax.set_yticklabels([str(l) for l in layers], fontsize=5)
                ax.set_xlabel("step", fontsize=7)
                ax.set_ylabel("layer", fontsize=7)
                fig.colorbar(im, ax=ax, fraction=0.05)
        fig.suptitle(f"NVFP4 relative MSE by layer over training ({name}; mean over kinds)")
        finish(fig, out, f"qerr_layers_{name}.png")


if __name__ == "__main__":
    main()
