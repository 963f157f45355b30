#!/usr/bin/env python3
"""plot_losses.py RUNDIR [OUT.png] — loss curves of every RUNDIR/*/log.csv
(one run per recipe): training loss (smoothed) and validation loss.
Needs matplotlib."""
import csv, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ["bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht", "fp32"]


def load(path):
    steps, loss, vsteps, vloss = [], [], [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            s = int(row["step"])
            steps.append(s)
            loss.append(float(row["loss"]))
            if row["val_loss"]:
                vsteps.append(s)
                vloss.append(float(row["val_loss"]))
    return steps, loss, vsteps, vloss


def smooth(y, k=20):
    out, acc = [], []
    for v in y:
        acc.append(v)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    rundir = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(rundir, "loss_curves.png")
    runs = [d for d in os.listdir(rundir) if os.path.isfile(os.path.join(rundir, d, "log.csv"))]
    runs.sort(key=lambda d: (ORDER.index(d) if d in ORDER else 99, d))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for d in runs:
        s, l, vs, vl = load(os.path.join(rundir, d, "log.csv"))
        a1.plot(s, smooth(l), label=d, lw=1.2)
        a2.plot(vs, vl, marker="o", ms=3, label=d, lw=1.2)
    a1.set_title("training loss (20-step mean)")
    a2.set_title("validation loss")
    for a in (a1, a2):
        a.set_xlabel("step")
        a.set_ylabel("cross-entropy (nats/token)")
        a.grid(alpha=0.3)
        a.legend()
    # zoom the validation panel on the end of training, where recipes differ
    vals = [load(os.path.join(rundir, d, "log.csv"))[3] for d in runs]
    tail = [v for vl in vals for v in vl[len(vl) // 2:]]
    if tail:
        lo, hi = min(tail), max(tail)
        a2.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.3 * (hi - lo + 1e-3))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
