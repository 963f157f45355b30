#!/usr/bin/env python3
"""report.py EXPDIR — the plots (scripts/plot_analysis.py) and EXPDIR/report.md
from EXPDIR/analysis_{bf16,nvfp4,averis}.csv (and log_*.csv): a verdict per
analytic claim of the paper, with the numbers it rests on.

Rules (stated in the report; "activations" = the linears' inputs attn_in,
attn_out, ffn_in, ffn_down_in; the bf16 run unless said otherwise):
  1 R grows with training   R(last step) > R(first step after 0) per
                            (layer, activation kind): share of pairs
  2 R grows with depth      Spearman correlation of R with the layer, last step,
                            per activation kind
  3 attention / FFN amplify R(attn_out)/R(attn_in) and R(ffn_down_in)/R(ffn_in)
    the mean                per layer, last step: share > 1
  4 cos(μ, v₁) ≈ 1          median over activation tensors at the last step
  5 the mean explains the   share of the top-0.1% magnitudes with μ_j²/x² > 0.5,
    top 0.1%                median over activation tensors, last step
  6 splitting cuts NVFP4    relMSE(split)/relMSE(plain) per tensor, last step, for
    error                   activations and for gradients, on each run's tensors
A share ≥ 0.75 (or a median ≥ the threshold) is "reproduced", ≤ 0.25 "not
reproduced", between "mixed"."""
import csv, os, statistics, sys
from collections import defaultdict

ACT = ["attn_in", "attn_out", "ffn_in", "ffn_down_in"]


def load(path):
    with open(path) as f:
        return [{k: (v if k == "kind" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def verdict_share(x, hi=0.75, lo=0.25):
    return "reproduced" if x >= hi else ("not reproduced" if x <= lo else "mixed")


def spearman(xs, ys):
    def ranks(v):
        o = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(o):
            r[i] = k
        return r
    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def main():
    exp = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    runs = {}
    for r in ["bf16", "nvfp4", "averis"]:
        p = os.path.join(exp, f"analysis_{r}.csv")
        if os.path.exists(p):
            runs[r] = load(p)
    if not runs:
        sys.exit(f"report.py: no analysis_*.csv in {exp}")
    plots = []
    try:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
        import plot_analysis
        sys.argv = ["plot_analysis.py", exp] + [os.path.join(exp, f"analysis_{r}.csv") for r in runs]
        plot_analysis.main()
        plots = sorted(f for f in os.listdir(exp) if f.endswith(".png"))
    except ImportError as e:
        print(f"report.py: no plots ({e})")
    base_name = "bf16" if "bf16" in runs else next(iter(runs))
    base = runs[base_name]
    steps = sorted({r["step"] for r in base})
    last = steps[-1]
    first = steps[1] if len(steps) > 1 else steps[0]
    at = lambda rows, s, k: {int(r["layer"]): r for r in rows if r["step"] == s and r["kind"] == k}
    L = int(max(r["layer"] for r in base if r["kind"] in ACT)) + 1
    out = []
    w = out.append
    logs = {}
    for r in runs:
        p = os.path.join(exp, f"log_{r}.csv")
        if os.path.exists(p):
            rows = list(csv.DictReader(open(p)))
            vl = [float(x["val_loss"]) for x in rows if x.get("val_loss")]
            logs[r] = (int(float(rows[-1]["step"])), float(rows[-1]["tokens"]), vl[-1] if vl else float("nan"))
    w("# The mean-bias analysis at training scale (issue 24)\n")
    w(f"Runs: {', '.join(runs)}; the 88M Qwen3 (config_88m.json), 16×1024 tokens a step, metrics on the GPU "
      f"(cuda/analysis.cu) on the first validation batch at steps {', '.join(str(int(s)) for s in steps)}. "
      f"Claims 1–5 on the {base_name} run; step 0 is the initialisation, \"first\" is step {int(first)}.\n")
    if logs:
        w("| run | steps | tokens | final val loss |\n|---|---|---|---|")
        for r, (s, t, v) in logs.items():
            w(f"| {r} | {s} | {t / 1e6:.1f}M | {v:.4f} |")
        w("")
    w("| claim | verdict | numbers |\n|---|---|---|")
    # 1 R over training
    up, tot, detail = 0, 0, []
    for k in ACT:
        a, b = at(base, first, k), at(base, last, k)
        ks = [l for l in a if l in b]
        u = sum(b[l]["R"] > a[l]["R"] for l in ks)
        up += u
        tot += len(ks)
        if ks:
            detail.append(f"{k} {statistics.mean(a[l]['R'] for l in ks):.3f}→{statistics.mean(b[l]['R'] for l in ks):.3f}")
    s1 = up / tot if tot else float("nan")
    w(f"| R grows with training | {verdict_share(s1)} | R rose from step {int(first)} to {int(last)} in {up}/{tot} "
      f"(layer, kind); mean R {'; '.join(detail)} |")
    # 2 R with depth
    rhos = []
    for k in ACT:
        b = at(base, last, k)
        ls = sorted(b)
        rhos.append((k, spearman(ls, [b[l]["R"] for l in ls]), b[ls[0]]["R"] if ls else 0, b[ls[-1]]["R"] if ls else 0))
    pos = sum(r[1] > 0.5 for r in rhos) / len(rhos)
    w(f"| R grows with depth | {verdict_share(pos)} | Spearman(R, layer) at step {int(last)}: "
      + "; ".join(f"{k} {rho:.2f} (L0 {r0:.3f} → L{L - 1} {r1:.3f})" for k, rho, r0, r1 in rhos) + " |")
    # 3 amplification
    def amp(k_in, k_out):
        a, b = at(base, last, k_in), at(base, last, k_out)
        ls = [l for l in a if l in b]
        rat = [b[l]["R"] / a[l]["R"] for l in ls if a[l]["R"] > 0]
        return sum(x > 1 for x in rat) / max(len(rat), 1), statistics.median(rat) if rat else float("nan")
    sa, ma = amp("attn_in", "attn_out")
    sf, mf = amp("ffn_in", "ffn_down_in")
    w(f"| attention and the FFN amplify the mean | attention {verdict_share(sa)}, FFN {verdict_share(sf)} | "
      f"R(attn_out)/R(attn_in) > 1 in {sa:.0%} of layers (median ratio {ma:.2f}); R(ffn_down_in)/R(ffn_in) > 1 in "
      f"{sf:.0%} (median {mf:.2f}) |")
    # 4 cos
    cs = [r["cos_mu_v1"] for r in base if r["step"] == last and r["kind"] in ACT]
    deep = [r["cos_mu_v1"] for r in base if r["step"] == last and r["kind"] == "ffn_in" and r["layer"] >= 2 * L // 3]
    mc = statistics.median(cs)
    w(f"| cos(μ, v₁) ≈ 1 | {'reproduced' if mc >= 0.95 else ('mixed' if mc >= 0.8 else 'not reproduced')} | median "
      f"{mc:.3f} over activation tensors at step {int(last)} (min {min(cs):.3f}); deep FFN inputs "
      f"{statistics.median(deep) if deep else float('nan'):.3f} |")
    # 5 top 0.1%
    fh = [r["rho_frac_half"] for r in base if r["step"] == last and r["kind"] in ACT]
    fm = statistics.median(fh)
    by_kind = {k: statistics.mean(r["rho_frac_half"] for r in base if r["step"] == last and r["kind"] == k) for k in ACT}
    w(f"| the mean explains most top-0.1% magnitudes | {'reproduced' if fm >= 0.5 else ('mixed' if fm >= 0.2 else 'not reproduced')} | "
      f"share with μ_j²/x² > 0.5: median {fm:.3f}; by kind " + ", ".join(f"{k} {v:.3f}" for k, v in by_kind.items()) + " |")
    # 6 split cuts NVFP4 error, each run's tensors
    parts = []
    verdicts = []
    for rn, rows in runs.items():
        lr = max(r["step"] for r in rows)
        for gname, pred in [("activations", lambda k: not k.startswith("grad")), ("gradients", lambda k: k.startswith("grad"))]:
            rat = [r["relmse_split"] / r["relmse_plain"] for r in rows if r["step"] == lr and pred(r["kind"])
                   and r["relmse_plain"] > 0]
            fl = [(r["flushed_plain"], r["flushed_split"]) for r in rows if r["step"] == lr and pred(r["kind"])]
            if not rat:
                continue
            sh = sum(x < 1 for x in rat) / len(rat)
            verdicts.append(verdict_share(sh))
            parts.append(f"{rn} {gname}: split < plain in {sh:.0%} (median ratio {statistics.median(rat):.3f}; flushed "
                         f"{statistics.mean(a for a, _ in fl):.4f}→{statistics.mean(b for _, b in fl):.4f})")
    v6 = verdicts[0] if verdicts and all(v == verdicts[0] for v in verdicts) else "mixed"
    w(f"| splitting cuts the NVFP4 error of activations and gradients | {v6} | " + "; ".join(parts) + " |")
    w("")
    w("Rules: claim 1 compares each (layer, activation kind) at the last step with the first analysed step after "
      "initialisation; claim 2 is reproduced when Spearman(R, layer) > 0.5 for ≥ 75% of the activation kinds; "
      "claim 3 when the ratio exceeds 1 in ≥ 75% of layers; claim 4 when the median cos ≥ 0.95 (mixed ≥ 0.8); "
      "claim 5 when the median share ≥ 0.5 (mixed ≥ 0.2); claim 6 when the split has the smaller relative MSE in "
      "≥ 75% of tensors for every run and group. Shares between 25% and 75% are \"mixed\".\n")
    w("The CPU tiny run (experiments/meanbias/report.md: 1.3M parameters, 500 steps) found R growing with depth "
      "but not with training, cos 0.89–0.95 and the mean not explaining the top magnitudes; compare the rows above.\n")
    if plots:
        w("## Plots\n")
        for p in plots:
            w(f"![{p}]({p})\n")
    with open(os.path.join(exp, "report.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
