#!/usr/bin/env python3
"""report.py SWEEP_DIR [--out DIR] — the fidelity report of a recipe sweep
(scripts/sweep.py): DIR/report.md (default SWEEP_DIR/report) and, where
matplotlib is installed, DIR/loss_curves.png and DIR/paired_vs_nvfp4.png.

Reads SWEEP_DIR/sweep.csv, sweep_args.json and runs/*/log.csv (and
runs/*/analysis.csv where the sweep ran with --analyze-every). Standard
library only, matplotlib optional.

The numbers: final validation loss (the whole validation split) per recipe
and seed; per recipe its mean over seeds, the seed spread (max − min) and
the gap to bf16; paired differences against nvfp4 (recipe − nvfp4 at the
same seed: the same initial weights and data order, so init noise partly
cancels); the same for the mean training loss over the last steps.

Downstream (where sweep.csv has the columns, scripts/sweep.py): every
recipe's zero-shot acc_norm ± its standard error per seed, the mean over
seeds, and the paired difference to bf16 (recipe − bf16, same seed) beside
the validation-loss gap to bf16, as a paper reports them; verdicts by the
same tie rule (higher accuracy is better).

The tie rule: a difference is a tie unless its size exceeds the noise, the
larger seed spread of the two recipes compared, and every seed's paired
difference has the same sign. Nothing here is tuned to make a recipe win.
"""
import argparse
import csv
import json
import math
import os
import statistics
import sys

ORDER = ["bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht", "fp32"]
FP4 = ["nvfp4", "nvfp4-rht", "averis", "averis-rht"]


def fnum(x):
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def load_log(path):
    rows = []
    try:
        with open(path) as f:
            for r in csv.DictReader(f):
                rows.append((int(float(r["step"])), fnum(r["loss"]), fnum(r.get("val_loss"))))
    except FileNotFoundError:
        pass
    return rows


def base(recipe):
    return recipe.split(",")[0]


def order_key(recipe):
    b = base(recipe)
    return (ORDER.index(b) if b in ORDER else len(ORDER), recipe)


def spread(xs):
    return max(xs) - min(xs) if len(xs) > 1 else float("nan")


def fmt(x, d=4, sign=False):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def verdict(diffs, noise):
    """'better' (negative: lower loss), 'worse' or 'tie', by the tie rule."""
    if not diffs or noise is None or not math.isfinite(noise):
        return "tie (one seed: no spread to compare with)" if diffs else "–"
    m = statistics.mean(diffs)
    same_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    if abs(m) > noise and same_sign:
        return "better" if m < 0 else "worse"
    return "tie"


def moving_mean(y, k):
    out, acc, q = [], 0.0, []
    for v in y:
        q.append(v)
        acc += v
        if len(q) > k:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def downstream_section(rows, recipes, seeds, val, w):
    """acc_norm ± stderr per recipe and seed, paired Δ vs bf16 and the loss gap beside it (see the top)."""
    done = [r for r in rows if r["status"] == "done" and fnum(r.get("acc_norm")) is not None]
    if not done:
        return
    acc = {(r["recipe"], int(r["seed"])): (fnum(r["acc_norm"]), fnum(r.get("acc_norm_stderr"))) for r in done}
    raw = {(r["recipe"], int(r["seed"])): fnum(r.get("acc")) for r in done}
    tasks = sorted({r.get("task", "") for r in done})
    items = sorted({r.get("task_items", "") for r in done})
    w(f"## Downstream: zero-shot acc_norm (task {', '.join(f'`{t}`' for t in tasks)}, {'/'.join(items)} items)\n")
    w("acc_norm ± its standard error (lm-eval's: sample standard deviation / √items) per seed; Δ vs bf16 = "
      "recipe − bf16 at the same seed (positive = more accurate); noise = the larger seed spread of the two "
      "recipes; a difference is a tie unless |mean Δ| > noise and every seed agrees in sign. The validation-loss "
      "gap to bf16 (mean over seeds, recipe − bf16) is beside it.\n")
    w("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean acc_norm | mean acc | "
      + " | ".join(f"Δ seed {s}" for s in seeds) + " | mean Δ | noise | verdict vs bf16 | val-loss gap to bf16 |")
    w("|---|" + "---|" * (2 * len(seeds) + 6))
    bf = {s: acc[("bf16", s)][0] for s in seeds if ("bf16", s) in acc}
    bf_val = [val[("bf16", s)] for s in seeds if ("bf16", s) in val]
    for rcp in recipes:
        cells = [f"{fmt(acc[(rcp, s)][0])} ± {fmt(acc[(rcp, s)][1])}" if (rcp, s) in acc else "–" for s in seeds]
        mine = [acc[(rcp, s)][0] for s in seeds if (rcp, s) in acc]
        mraw = [raw[(rcp, s)] for s in seeds if raw.get((rcp, s)) is not None]
        m = statistics.mean(mine) if mine else None
        d = [acc[(rcp, s)][0] - bf[s] for s in seeds if (rcp, s) in acc and s in bf]
        dcells = [fmt(acc[(rcp, s)][0] - bf[s], sign=True) if (rcp, s) in acc and s in bf else "–" for s in seeds]
        have_bf = list(bf.values())
        noise = max(spread(mine), spread(have_bf)) if len(mine) > 1 and len(have_bf) > 1 else float("nan")
        v = verdict([-x for x in d], noise) if rcp != "bf16" else "–"  # verdict() calls negative 'better'
        vals = [val[(rcp, s)] for s in seeds if (rcp, s) in val]
        gap = statistics.mean(vals) - statistics.mean(bf_val) if vals and bf_val and rcp != "bf16" else None
        w(f"| {rcp} | " + " | ".join(cells) + f" | {fmt(m)} | {fmt(statistics.mean(mraw) if mraw else None)} | "
          + " | ".join(dcells if rcp != "bf16" else ["–"] * len(seeds))
          + f" | {fmt(statistics.mean(d), sign=True) if d and rcp != 'bf16' else '–'} | "
          f"{fmt(noise) if rcp != 'bf16' else '–'} | {v} | {fmt(gap, sign=True) if gap is not None else '–'} |")
    w("")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", help="report directory (default SWEEP_DIR/report)")
    ap.add_argument("--smooth", type=int, default=50, help="moving-average window of the training-loss curves (steps)")
    a = ap.parse_args()
    out = a.out or os.path.join(a.sweep_dir, "report")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(a.sweep_dir, "sweep.csv")) as f:
        rows = list(csv.DictReader(f))
    try:
        with open(os.path.join(a.sweep_dir, "sweep_args.json")) as f:
            args = json.load(f)
    except FileNotFoundError:
        args = {}
    done = [r for r in rows if r["status"] == "done" and fnum(r["final_val_loss"]) is not None]
    recipes = sorted({r["recipe"] for r in rows}, key=order_key)
    seeds = sorted({int(r["seed"]) for r in rows})
    val = {(r["recipe"], int(r["seed"])): fnum(r["final_val_loss"]) for r in done}
    tail = {(r["recipe"], int(r["seed"])): fnum(r["train_loss_tail"]) for r in done}
    L = []
    w = L.append

    # ---- setup
    ta = args.get("train_args", [])
    def targ(name, default="?"):
        v = default
        for i, x in enumerate(ta):
            if x == name and i + 1 < len(ta):
                v = ta[i + 1]
        return v
    params = next((int(r["params"]) for r in rows if r.get("params")), None)
    tokens = next((int(r["tokens"]) for r in done), None)
    tps = [fnum(r["tokens_per_s"]) for r in done if fnum(r["tokens_per_s"])]
    train_s = sum(fnum(r["train_s"]) or 0 for r in rows)
    wall_s = sum(fnum(r["wall_s"]) or 0 for r in rows)
    w("# Recipe fidelity sweep\n")
    w(f"Generated by `experiments/fidelity/report.py` from `{os.path.abspath(a.sweep_dir)}`.\n")
    w("## Setup\n")
    w(f"- model: `{targ('--config')}`, {params / 1e6:.2f}M parameters" if params else f"- model: `{targ('--config')}`")
    w(f"- recipes: {', '.join(recipes)}; seeds: {', '.join(map(str, seeds))} "
      f"({len(done)} of {len(rows)} runs finished)")
    if tokens:
        w(f"- per run: {args.get('steps', '?')} steps × {args.get('tokens_per_step', '?')} tokens = "
          f"{tokens / 1e6:.2f}M tokens" + (f" ({tokens / params:.2f} tokens per parameter)" if params else ""))
    w(f"- lr {targ('--lr', 'default')}, batch {targ('--batch', '8')} × seq {targ('--seq', '128')}, "
      f"device {args.get('device', '?')}")
    w(f"- validation: the whole held-out split, {args.get('val_tokens', '?')} tokens "
      f"({args.get('val_batches', '?')} batches); training-loss tail: the last {args.get('tail', '?')} steps")
    if tps:
        w(f"- throughput: {min(tps):.0f}–{max(tps):.0f} tokens/s per run; {train_s:.0f} s of training steps, "
          f"{wall_s:.0f} s of run wall time in all (runs may overlap)")
    w("- pairing: every run reads the same tokens in the same order; the runs of one seed start from the "
      "same weights (init hash); FP4 recipes use the seed for stochastic rounding too")
    try:
        w(f"- {open(os.path.join(a.sweep_dir, 'pairing.txt')).readline().strip()}")
    except FileNotFoundError:
        pass
    w("")

    # ---- final validation loss per recipe and seed
    def table(metric, name):
        w(f"## {name}\n")
        w("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | seed spread | gap to bf16 | gap % |")
        w("|---|" + "---|" * (len(seeds) + 4))
        bf = [metric[("bf16", s)] for s in seeds if ("bf16", s) in metric]
        bf_mean = statistics.mean(bf) if bf else None
        for rcp in recipes:
            xs = [metric.get((rcp, s)) for s in seeds]
            have = [x for x in xs if x is not None]
            m = statistics.mean(have) if have else None
            gap = m - bf_mean if m is not None and bf_mean is not None else None
            w(f"| {rcp} | " + " | ".join(fmt(x) for x in xs) + f" | {fmt(m)} | {fmt(spread(have) if have else None)} | "
              f"{fmt(gap, sign=True) if rcp != 'bf16' else '–'} | "
              f"{fmt(100 * gap / bf_mean, 2, sign=True) if gap is not None and rcp != 'bf16' else '–'} |")
        w("")

    table(val, "Final validation loss")
    table(tail, f"Mean training loss over the last {args.get('tail', 'N')} steps")

    # ---- paired differences vs nvfp4
    claims = {}
    for metric, name in ((val, "validation loss"), (tail, "training-loss tail")):
        w(f"## Paired differences vs nvfp4 ({name}; recipe − nvfp4, same seed)\n")
        w("Negative = lower loss than nvfp4. Noise = the larger seed spread of the two recipes. "
          "A difference is a tie unless |mean| > noise and every seed agrees in sign.\n")
        w("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | noise | verdict |")
        w("|---|" + "---|" * (len(seeds) + 3))
        nv = {s: metric.get(("nvfp4", s)) for s in seeds}
        nv_have = [x for x in nv.values() if x is not None]
        for rcp in recipes:
            if base(rcp) == "nvfp4" and rcp == "nvfp4":
                continue
            d = [metric[(rcp, s)] - nv[s] for s in seeds if (rcp, s) in metric and nv[s] is not None]
            mine = [metric[(rcp, s)] for s in seeds if (rcp, s) in metric]
            noise = max(spread(mine), spread(nv_have)) if len(mine) > 1 and len(nv_have) > 1 else float("nan")
            v = verdict(d, noise)
            claims[(rcp, name)] = v
            w(f"| {rcp} | " + " | ".join(fmt(metric[(rcp, s)] - nv[s], sign=True)
                                         if (rcp, s) in metric and nv[s] is not None else "–" for s in seeds)
              + f" | {fmt(statistics.mean(d), sign=True) if d else '–'} | {fmt(noise)} | {v} |")
        w("")

    downstream_section(rows, recipes, seeds, val, w)

    # ---- claims
    w("## Verdict on the claims\n")
    def claim_line(text, rcp):
        v1, v2 = claims.get((rcp, "validation loss"), "–"), claims.get((rcp, "training-loss tail"), "–")
        w(f"- {text}: validation loss **{v1}**, training-loss tail **{v2}** (vs nvfp4)")
    claim_line("averis < nvfp4", "averis")
    claim_line("nvfp4-rht < nvfp4", "nvfp4-rht")
    fp4 = [r for r in recipes if base(r) in FP4]
    means = {r: statistics.mean([val[(r, s)] for s in seeds if (r, s) in val]) for r in fp4
             if any((r, s) in val for s in seeds)}
    if "averis-rht" in means:
        best = min(means, key=means.get)
        beats = []
        for other in means:
            if other == "averis-rht":
                continue
            d = [val[("averis-rht", s)] - val[(other, s)] for s in seeds if ("averis-rht", s) in val and (other, s) in val]
            a_ = [val[("averis-rht", s)] for s in seeds if ("averis-rht", s) in val]
            o_ = [val[(other, s)] for s in seeds if (other, s) in val]
            noise = max(spread(a_), spread(o_)) if len(a_) > 1 and len(o_) > 1 else float("nan")
            beats.append(f"{other}: {verdict(d, noise)}")
        w(f"- averis-rht best among the FP4 recipes: lowest mean validation loss is **{best}**; "
          f"averis-rht vs each (paired, tie rule): {'; '.join(beats)}")
    w("- R grows with training: " + analysis_summary(a.sweep_dir, rows, w_table=None))
    w("")
    analysis_section(a.sweep_dir, rows, w)

    # ---- plots
    plots = make_plots(a.sweep_dir, rows, recipes, seeds, out, a.smooth)
    if plots:
        w("## Plots\n")
        for p, cap in plots:
            w(f"![{cap}]({p})\n")
    else:
        w("(matplotlib is not installed here: no plots)\n")
    w("## Caveats\n")
    w("- Two seeds give a crude spread (max − min); a difference below it is reported as a tie, not as a result.")
    w("- Short runs (well under the ~20 tokens per parameter of compute-optimal training) measure early "
      "training; the order of recipes may change with longer training.")
    text = "\n".join(L) + "\n"
    tmp = os.path.join(out, "report.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out, "report.md"))
    print(f"report: {os.path.join(out, 'report.md')} ({len(done)} runs, {len(plots)} plots)")
    return 0


def load_analysis(sweep_dir, rows):
    """{recipe: {seed: [(step, layer, kind, R, cos, rho, flushed_mean)]}} for runs with analysis.csv."""
    res = {}
    for r in rows:
        p = os.path.join(sweep_dir, r["run_dir"], "analysis.csv")
        if not os.path.exists(p):
            continue
        items = []
        with open(p) as f:
            for x in csv.DictReader(f):
                fl = [fnum(v) for k, v in x.items() if k.startswith("flushed_") and fnum(v) is not None]
                items.append((int(x["step"]), x["layer"], x["kind"], fnum(x["R"]), fnum(x["cos_mu_v1"]),
                              fnum(x["rho_median"]), statistics.mean(fl) if fl else None))
        res.setdefault(r["recipe"], {})[int(r["seed"])] = items
    return res


def analysis_summary(sweep_dir, rows, w_table):
    an = load_analysis(sweep_dir, rows)
    if not an:
        return "not measured in this sweep (run it with --analyze-every, e.g. ANALYZE_EVERY=250 in device_sweep.sh)"
    parts = []
    for rcp, by_seed in sorted(an.items(), key=lambda kv: order_key(kv[0])):
        grows = []
        for seed, items in sorted(by_seed.items()):
            steps = sorted({i[0] for i in items})
            if len(steps) < 2:
                continue
            first = [i[3] for i in items if i[0] == steps[0] and i[3] is not None]
            last = [i[3] for i in items if i[0] == steps[-1] and i[3] is not None]
            if first and last:
                grows.append(statistics.mean(last) > statistics.mean(first))
        if grows:
            parts.append(f"{rcp}: mean R over layers {'grows' if all(grows) else 'does not grow' if not any(grows) else 'grows in some seeds'} "
                         f"from the first to the last analysis step")
    return "; ".join(parts) if parts else "too few analysis steps"


def analysis_section(sweep_dir, rows, w):
    an = load_analysis(sweep_dir, rows)
    if not an:
        return
    w("## Mean bias over training (first validation batch, by layer kind; mean over layers and seeds)\n")
    w("| recipe | kind | step | R | cos(μ, v₁) | ρ (median) | flushed share (mean over the quantizers) |")
    w("|---|---|---|---|---|---|---|")
    for rcp, by_seed in sorted(an.items(), key=lambda kv: order_key(kv[0])):
        items = [i for its in by_seed.values() for i in its]
        for kind in sorted({i[2] for i in items}):
            for step in sorted({i[0] for i in items if i[2] == kind}):
                sel = [i for i in items if i[2] == kind and i[0] == step]
                def m(k):
                    v = [i[k] for i in sel if i[k] is not None]
                    return statistics.mean(v) if v else None
                w(f"| {rcp} | {kind} | {step} | {fmt(m(3))} | {fmt(m(4))} | {fmt(m(5))} | {fmt(m(6), 5)} |")
    w("")
    # by depth at the last step
    w("By depth at the last analysis step (R, mean over kinds and seeds):\n")
    w("| recipe | layer | R |")
    w("|---|---|---|")
    for rcp, by_seed in sorted(an.items(), key=lambda kv: order_key(kv[0])):
        items = [i for its in by_seed.values() for i in its]
        last = max(i[0] for i in items)
        for layer in sorted({i[1] for i in items if i[0] == last}, key=lambda x: (len(x), x)):
            v = [i[3] for i in items if i[0] == last and i[1] == layer and i[3] is not None]
            w(f"| {rcp} | {layer} | {fmt(statistics.mean(v) if v else None)} |")
    w("")


def make_plots(sweep_dir, rows, recipes, seeds, out, k):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    logs = {(r["recipe"], int(r["seed"])): load_log(os.path.join(sweep_dir, r["run_dir"], "log.csv")) for r in rows}
    colors = {"bf16": "black", "nvfp4": "tab:red", "nvfp4-rht": "tab:orange", "averis": "tab:blue",
              "averis-rht": "tab:green", "fp32": "gray"}
    styles = ["-", "--", ":", "-."]
    plots = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for rcp in recipes:
        for j, s in enumerate(seeds):
            lg = logs.get((rcp, s)) or []
            if not lg:
                continue
            st = [x[0] for x in lg if x[1] is not None]
            ls = moving_mean([x[1] for x in lg if x[1] is not None], k)
            kw = dict(color=colors.get(base(rcp)), ls=styles[j % len(styles)], lw=1,
                      label=f"{rcp} s{s}")
            ax1.plot(st, ls, **kw)
            vs = [(x[0], x[2]) for x in lg if x[2] is not None]
            if vs:
                ax2.plot([v[0] for v in vs], [v[1] for v in vs], marker="o", ms=3, **kw)
    ax1.set_title(f"training loss (moving mean over {k} steps)")
    ax2.set_title("validation loss (whole split)")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    # zoom on the last part, where the recipes separate
    allv = [x[1] for lg in logs.values() for x in lg[len(lg) // 3:] if x[1] is not None]
    if allv:
        lo, hi = sorted(allv)[len(allv) // 50], sorted(allv)[-len(allv) // 50 - 1]
        ax1.set_ylim(lo - 0.05 * (hi - lo), hi + 0.3 * (hi - lo))
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)
    plots.append(("loss_curves.png", "loss curves"))
    # paired training-loss difference vs nvfp4, same seed
    fig, ax = plt.subplots(figsize=(8, 5))
    drew = False
    for rcp in recipes:
        if rcp == "nvfp4":
            continue
        for j, s in enumerate(seeds):
            a_, b_ = logs.get((rcp, s)) or [], logs.get(("nvfp4", s)) or []
            da = {x[0]: x[1] for x in a_ if x[1] is not None}
            db = {x[0]: x[1] for x in b_ if x[1] is not None}
            st = sorted(set(da) & set(db))
            if not st:
                continue
            d = moving_mean([da[t] - db[t] for t in st], k)
            ax.plot(st, d, color=colors.get(base(rcp)), ls=styles[j % len(styles)], lw=1, label=f"{rcp} s{s}")
            drew = True
    if drew:
        ax.axhline(0, color="tab:red", lw=0.8)
        ax.set_title(f"training loss − nvfp4's (same seed, same batches; moving mean over {k} steps)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "paired_vs_nvfp4.png"), dpi=120)
        plots.append(("paired_vs_nvfp4.png", "paired difference vs nvfp4"))
    plt.close(fig)
    return plots


if __name__ == "__main__":
    sys.exit(main())
