#!/usr/bin/env python3
"""ncu_summary.py — device time by kernel from `ncu --csv --metrics
gpu__time_duration.sum` output (scripts/device_analysis.sh,
DEVICE_ANALYSIS_NCU=1): one line per kernel name (arguments dropped) with
its launches, total ms, mean µs and share, largest first.

    python3 scripts/ncu_summary.py NCU_OUTPUT [--top N]
"""
import argparse
import csv
import io
import sys
from collections import defaultdict

UNIT_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}


def summarise(text):
    """{kernel: [launches, ms]} from ncu's CSV (other lines, ==PROF== and the program's, are skipped)."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no ncu CSV header (a line starting with \"ID\") in the input")
    rows = csv.DictReader(io.StringIO("\n".join(l for l in lines[start:] if l.startswith('"'))))
    out = defaultdict(lambda: [0, 0.0])
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "")
        if unit not in UNIT_MS:
            raise ValueError(f"unknown unit {unit!r} for {r.get('Kernel Name')}")
        name = r.get("Kernel Name", "?").split("(")[0].strip()
        v = float(r["Metric Value"].replace(",", ""))
        out[name][0] += 1
        out[name][1] += v * UNIT_MS[unit]
    return out


def main(argv):
    ap = argparse.ArgumentParser(prog="ncu_summary.py", description=__doc__.strip().splitlines()[0])
    ap.add_argument("path", help="ncu's output (--csv --metrics gpu__time_duration.sum)")
    ap.add_argument("--top", type=int, default=40, help="kernels to list (default 40)")
    args = ap.parse_args(argv[1:])
    try:
        with open(args.path, encoding="utf-8", errors="replace") as f:
            s = summarise(f.read())
    except (OSError, ValueError) as e:
        print(f"ncu_summary: {args.path}: {e}", file=sys.stderr)
        return 1
    total = sum(v[1] for v in s.values())
    print(f"{'kernel':60s} {'launches':>8s} {'ms':>9s} {'us each':>9s} {'share':>6s}")
    for name, (n, ms) in sorted(s.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{name[:60]:60s} {n:8d} {ms:9.3f} {1e3 * ms / n:9.2f} {100 * ms / total if total else 0:5.1f}%")
    print(f"{'(all kernels)':60s} {sum(v[0] for v in s.values()):8d} {total:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
