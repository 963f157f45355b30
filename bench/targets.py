#!/usr/bin/env python3
"""Issue 14's speed targets, judged from one run's benchmark logs.

    python3 bench/targets.py DIR

DIR holds what scripts/device_check.sh writes: bench_step.txt and
bench_step_114m.txt (bench_cuda step), bench_torch.txt and
bench_torch_114m.txt (bench/torch_gpu_train.py), bench_quant.txt
(bench_cuda quant). Prints one line per target: the measured value, the
goal, and met / NOT MET / missing (a log or a row that is not there).
Exit status 0 whatever is met: the targets are reported, not tested.
"""
import os
import re
import sys


def rows(path, first_col):
    """{name: [float, ...]} from a table's rows whose first column is in first_col"""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path, errors="replace"):
        f = line.split()
        if len(f) >= 3 and f[0] in first_col:
            try:
                out.setdefault(f[0], [float(f[1]), float(f[2])])
            except ValueError:
                pass
    return out


def quant_rows(path):
    """{kernel name: vs-copy ratio} from bench_cuda quant's table"""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path, errors="replace"):
        m = re.match(r"^(v\d .*?|device-to-device copy.*?)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s*$", line)
        if m:
            out[m.group(1).strip()] = float(m.group(4))
    return out


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    d = sys.argv[1]
    lines = []

    def judge(name, value, goal, le):
        if value is None:
            lines.append(f"{name:<54} {'':>8} goal {'<=' if le else '>='} {goal:<5}  missing")
            return
        ok = value <= goal if le else value >= goal
        lines.append(f"{name:<54} {value:8.3f} goal {'<=' if le else '>='} {goal:<5}  {'met' if ok else 'NOT MET'}")

    recipes = {"bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"}
    for shape, step_log, torch_log in (("0.6B 8x1024", "bench_step.txt", "bench_torch.txt"),
                                       ("114M 16x1024", "bench_step_114m.txt", "bench_torch_114m.txt")):
        ours = rows(os.path.join(d, step_log), recipes)              # ms/step, tokens/s
        peer = rows(os.path.join(d, torch_log), {"eager", "compile", "fq-compile", "fq-compile-model", "fq-eager"})
        ms = {k: v[0] for k, v in ours.items()}
        pms = {k: v[0] for k, v in peer.items()}
        r = lambda a, b: a / b if a is not None and b else None
        judge(f"{shape}: bf16 vs torch.compile (tokens/s)", r(pms.get("compile"), ms.get("bf16")), 1.1, False)
        judge(f"{shape}: nvfp4 / bf16 (step time)", r(ms.get("nvfp4"), ms.get("bf16")), 1.20, True)
        judge(f"{shape}: averis / nvfp4 (step time)", r(ms.get("averis"), ms.get("nvfp4")), 1.02, True)
        v = r(ms.get("nvfp4-rht"), ms.get("nvfp4"))
        name = shape + ": nvfp4-rht / nvfp4 (reported)"
        lines.append(f"{name:<54} " + (f"{v:8.3f}" if v else "missing"))
        judge(f"{shape}: nvfp4 vs compiled fake-quant (tokens/s)", r(pms.get("fq-compile"), ms.get("nvfp4")), 1.5, False)
    q = quant_rows(os.path.join(d, "bench_quant.txt"))
    one = [v for k, v in q.items() if "amax known" in k]
    two = [v for k, v in q.items() if "two passes" in k or "split" in k or "wgrad copy" in k]
    judge("quantize, single pass (best) vs copy", max(one) if one else None, 0.85, False)
    judge("quantize, two-pass/split kernels (worst) vs copy", min(two) if two else None, 0.6, False)
    print("issue 14's targets, from " + d)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
