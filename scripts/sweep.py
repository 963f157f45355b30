#!/usr/bin/env python3
"""sweep.py — recipes × seeds over `averis train`, paired, resumable, with a
time budget; results in one CSV. Python standard library only.

    python3 scripts/sweep.py --out DIR --data DIR --recipes bf16,nvfp4,averis \\
        --seeds 1,2 [--device cuda] [--concurrent K] [--budget-s S] -- TRAIN OPTIONS

Pairing: every run reads the same shards from the first token with the same
batch shape (the loader is sequential), so the data order is the same for
all; every run of one seed starts from the same weights (--seed is the
weight-init seed and does not depend on the recipe). FP4 recipes also get
",seed=S" (their stochastic-rounding stream) unless the spec names one. Each
run prints its init hash and data hash (`averis train`); the sweep checks
that the init hash is equal across the recipes of a seed, differs between
seeds, and that finished runs read the same tokens (data hash), and writes
the result to OUT/pairing.txt.

Runs: OUT/runs/<recipe>_s<seed>/ (the run's checkpoints, log.csv, train.out).
A run with a checkpoint resumes (--resume); a finished run (OUT/runs/X/DONE)
is skipped, so calling the sweep again continues it. --budget-s: at that many
seconds after the start every run still going gets SIGTERM (it finishes the
step, writes a checkpoint and exits; SIGKILL after --stop-grace-s), and no run
starts when less than --min-start-s is left. Several runs at once:
--concurrent K per GPU (or on the CPU, each with --threads), one GPU each
from --gpus.

Downstream (issue 23): when a run finishes, `averis eval RUN --task TASK
--json RUN/downstream.json` scores its final checkpoint on a zero-shot
multiple-choice task (docs/huggingface.md) with the run's device and recipe.
TASK: --task FILE; without it tasks/default_cont.jsonl when --data is
data/default, else OUT/task.jsonl, built once by scripts/make_tasks.py from
the corpus's held-out split (deterministic; --task-kind prose|code).
--task-limit N scores the first N items only (--task-timeout-s bounds each
eval); --no-task skips all this. A
finished run whose downstream.json is missing or was made with other
options is scored again when the sweep is called again.

Outputs (atomic): OUT/sweep.csv (one row per run: status, steps, tokens,
final validation loss over the whole validation split, mean training loss
over the last --tail steps, tokens/s, training seconds, hashes, and the
task's acc, acc_norm and their standard errors),
OUT/progress.txt (progress and ETA per run), OUT/pairing.txt.
Exit status: 0 when no run failed and the pairing holds (runs may be left
unfinished by the budget: see the 'sweep:' line), 1 otherwise, 2 on usage.
"""
import argparse
import csv
import glob
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time

FP4_RECIPES = ("nvfp4", "nvfp4-rht", "averis", "averis-rht")
CSV_FIELDS = ["recipe", "seed", "status", "steps_done", "steps", "tokens", "final_val_loss", "val_tokens",
              "val_batches", "train_loss_tail", "tail_steps", "tokens_per_s", "train_s", "wall_s", "params",
              "init_hash", "data_hash", "run_dir", "task", "task_items", "acc", "acc_stderr", "acc_norm",
              "acc_norm_stderr"]
DEFAULT_TASK = "tasks/default_cont.jsonl"


def atomic_write(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def shard_tokens(path):
    """Token count of an llm.c shard (header: int32 magic 20240520, version, ntok)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12:
        raise SystemExit(f"sweep: {path}: not an llm.c shard (short header)")
    magic, _, n = struct.unpack("<iii", head)
    if magic != 20240520:
        raise SystemExit(f"sweep: {path}: not an llm.c shard (magic {magic})")
    return n


def train_opt(args, name, default):
    """The value of --name in the train options (the last one wins), else default."""
    val = default
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            val = args[i + 1]
        elif a.startswith(name + "="):
            val = a.split("=", 1)[1]
    return val


def run_name(recipe, seed):
    return re.sub(r"[^A-Za-z0-9.-]+", "_", recipe) + f"_s{seed}"


def recipe_spec(recipe, seed, sr_seed):
    base = recipe.split(",")[0]
    if sr_seed and base in FP4_RECIPES and "seed=" not in recipe:
        return f"{recipe},seed={seed}"
    return recipe


def read_log(path):
    """log.csv rows as dicts of floats (val_loss None where empty); [] if absent."""
    rows = []
    try:
        with open(path) as f:
            for r in csv.DictReader(f):
                try:
                    rows.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
                except ValueError:
                    break  # a row cut by a kill
    except FileNotFoundError:
        pass
    return rows


def read_hashes(path):
    """(init hash, data hash, params) from a run's train.out: the first init hash, the last data hash."""
    init = data = params = ""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"train: init hash ([0-9a-f]{16}) \(seed \d+, (\d+) params\)", line)
                if m and not init:
                    init, params = m.group(1), m.group(2)
                m = re.match(r"train: data hash ([0-9a-f]{16})", line)
                if m:
                    data = m.group(1)
    except FileNotFoundError:
        pass
    return init, data, params


def fmt_s(s):
    if s is None or not math.isfinite(s) or s < 0:
        return "?"
    s = int(s + 0.5)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Run:
    def __init__(self, recipe, seed, out, steps):
        self.recipe, self.seed, self.steps = recipe, seed, steps
        self.name = run_name(recipe, seed)
        self.dir = os.path.join(out, "runs", self.name)
        self.proc = None
        self.slot = None
        self.failed = False
        self.launched = False  # at most one segment per invocation
        self.t_start = None

    @property
    def done(self):
        return os.path.exists(os.path.join(self.dir, "DONE"))

    def has_ckpt(self):
        return os.path.exists(os.path.join(self.dir, "latest"))

    def meta(self):
        try:
            with open(os.path.join(self.dir, "sweep.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {"wall_s": 0.0, "segments": 0}

    def save_meta(self, m):
        os.makedirs(self.dir, exist_ok=True)
        atomic_write(os.path.join(self.dir, "sweep.json"), json.dumps(m) + "\n")


def task_for(a):
    """The task file of the sweep (see the top), building OUT/task.jsonl once if needed; None with --no-task."""
    if a.no_task:
        return None
    if a.task:
        if not os.path.isfile(a.task):
            print(f"sweep: --task {a.task}: no such file", file=sys.stderr)
            sys.exit(2)
        return a.task
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if os.path.realpath(a.data) == os.path.realpath(os.path.join(root, "data", "default")):
        return os.path.join(root, DEFAULT_TASK)
    out = os.path.join(a.out, "task.jsonl")
    if not os.path.isfile(out):  # make_tasks.py is deterministic: the same corpus gives the same file
        cmd = [sys.executable, os.path.join(here, "make_tasks.py"), a.data, out, "--kind", a.task_kind]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0 or not os.path.isfile(out):
            raise SystemExit(f"sweep: building the downstream task from {a.data} failed ({' '.join(cmd)}): "
                             f"{(p.stderr or p.stdout).strip().splitlines()[-1:] or '?'}; pass --task FILE or --no-task")
        print(f"sweep: downstream task {out}: {(p.stdout or p.stderr).strip().splitlines()[-1:] or ''}", flush=True)
    return out


def downstream(a, run, task, threads, gpu):
    """Scores RUN's final checkpoint on TASK into RUN/downstream.json (kept if made with the same options);
    returns an error line or None."""
    js = os.path.join(run.dir, "downstream.json")
    cmd = [a.bin, "eval", run.dir, "--task", task, "--device", a.device, "--recipe", run.recipe,
           "--batch", str(a.task_batch), "--json", js]
    if a.task_limit > 0:
        cmd += ["--limit", str(a.task_limit)]
    key = " ".join(cmd[2:])  # without the binary, whose path may change
    try:
        with open(js) as f:
            if json.load(f).get("sweep_key") == key:
                return None
    except (FileNotFoundError, ValueError):
        pass
    cmd += ["--gpu", str(gpu or 0)] if a.device == "cuda" else ["--threads", str(threads)]
    with open(os.path.join(run.dir, "downstream.out"), "a") as log:
        log.write(f"# sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=a.task_timeout_s).returncode
        except subprocess.TimeoutExpired:
            log.write(f"# sweep: killed after {a.task_timeout_s:g} s (--task-timeout-s)\n")
            rc = "timeout"
    try:
        with open(js) as f:
            res = json.load(f)
    except (FileNotFoundError, ValueError):
        res = None
    if rc != 0 or res is None:
        tail = open(os.path.join(run.dir, "downstream.out"), errors="replace").read().splitlines()[-2:]
        return f"downstream eval of {run.name} failed (exit {rc}): {' / '.join(tail)}"
    res["sweep_key"] = key
    atomic_write(js, json.dumps(res) + "\n")
    print(f"sweep: task   {run.name}: acc {res['acc']:.4f} ± {res['acc_stderr']:.4f}, acc_norm "
          f"{res['acc_norm']:.4f} ± {res['acc_norm_stderr']:.4f} ({res['items']} items)", flush=True)
    return None


def progress_line(run, tokens_per_step, now):
    rows = read_log(os.path.join(run.dir, "log.csv"))
    step = int(rows[-1]["step"]) if rows else 0
    recent = [r["tokens_per_s"] for r in rows[-20:] if r.get("tokens_per_s")]
    tps = sum(recent) / len(recent) if recent else None
    eta = (run.steps - step) * tokens_per_step / tps if tps else None
    loss = rows[-1]["loss"] if rows else None
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    state = "done" if run.done else "running" if run.proc else "failed" if run.failed else "waiting"
    where = f" gpu {run.slot[0]}" if run.proc and run.slot and run.slot[0] is not None else ""
    return (f"{run.name:24s} {state:8s}{where:7s} step {step:6d}/{run.steps} ({100.0 * step / run.steps:5.1f}%)"
            f" loss {loss if loss is not None else float('nan'):.4f}"
            f" val {vals[-1] if vals else float('nan'):.4f}"
            f" {tps or 0:9.0f} tok/s ETA {fmt_s(eta) if state != 'done' else '-'}"), step, tps


def main():
    argv = sys.argv[1:]
    train_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Options after -- go to every `averis train` (e.g. --config, --steps, "
                                        "--batch, --seq, --lr, --val-every).")
    ap.add_argument("--out", required=True, help="the sweep's directory")
    ap.add_argument("--data", required=True, help="shards (*train*.bin, *val*.bin) for every run")
    ap.add_argument("--recipes", default="bf16,nvfp4,nvfp4-rht,averis,averis-rht", help="comma-separated")
    ap.add_argument("--seeds", default="1,2", help="comma-separated weight-init seeds")
    ap.add_argument("--bin", default="build/averis", help="the averis binary")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gpus", default="0", help="GPU indices for --device cuda (one run per GPU × --concurrent)")
    ap.add_argument("--concurrent", type=int, default=1, help="runs at once per GPU (or on the CPU)")
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads per run (default: CPUs / runs at once)")
    ap.add_argument("--budget-s", type=float, default=0, help="stop the sweep this many seconds after its start")
    ap.add_argument("--stop-grace-s", type=float, default=30, help="after SIGTERM, wait this long before SIGKILL")
    ap.add_argument("--min-start-s", type=float, default=45, help="start no run with less than this left")
    ap.add_argument("--tail", type=int, default=100, help="steps in the mean training loss at the end")
    ap.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N steps (default: steps/4)")
    ap.add_argument("--no-sr-seed", action="store_true", help="do not append ,seed=S to FP4 recipes")
    ap.add_argument("--analyze-every", type=int, default=0, help="mean-bias rows every K steps (see --analyze-recipes)")
    ap.add_argument("--analyze-recipes", default="bf16,averis", help="the recipes --analyze-every applies to")
    ap.add_argument("--report-s", type=float, default=30, help="progress lines every this many seconds")
    ap.add_argument("--task", help="downstream task (JSONL) for every finished run (default: see the top)")
    ap.add_argument("--task-kind", default="prose", choices=["prose", "code"],
                    help="the kind of task make_tasks.py builds when --task is not given")
    ap.add_argument("--task-limit", type=int, default=0, help="score the first N items of the task only")
    ap.add_argument("--task-timeout-s", type=float, default=900,
                    help="a downstream eval running longer is killed and reported as failed (default 900)")
    ap.add_argument("--task-batch", type=int, default=32, help="eval --task's --batch")
    ap.add_argument("--no-task", action="store_true", help="no downstream evaluation")
    a = ap.parse_args(argv)
    if a.concurrent < 1:
        ap.error("--concurrent must be ≥ 1")
    recipes = [r for r in a.recipes.split(";" if ";" in a.recipes else ",") if r]
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s]
    except ValueError:
        ap.error(f"--seeds: not a list of integers: {a.seeds!r}")
    gpus = [int(g) for g in a.gpus.split(",")] if a.device == "cuda" else [None]
    if not recipes or not seeds:
        ap.error("no recipes or no seeds")
    for forbidden in ("--recipe", "--seed", "--out", "--data", "--resume", "--device", "--gpu", "--val-batches"):
        if any(x == forbidden or x.startswith(forbidden + "=") for x in train_args):
            ap.error(f"{forbidden} is set by the sweep; leave it out of the train options")
    if not os.access(a.bin, os.X_OK):
        ap.error(f"{a.bin}: not an executable (run make, or pass --bin)")
    steps = int(train_opt(train_args, "--steps", 1000))
    B, T = int(train_opt(train_args, "--batch", 8)), int(train_opt(train_args, "--seq", 128))
    accum = int(train_opt(train_args, "--accum", 1))
    tokens_per_step = B * T * accum
    vals = sorted(glob.glob(os.path.join(a.data, "*val*.bin")))
    if not vals or not glob.glob(os.path.join(a.data, "*train*.bin")):
        ap.error(f"--data {a.data}: no *train*.bin or *val*.bin shards")
    val_tokens = sum(shard_tokens(p) for p in vals)
    val_batches = max(1, (val_tokens - 1) // (B * T))  # the whole split, as train's eval walks it
    ckpt_every = a.ckpt_every or max(1, steps // 4)
    os.makedirs(a.out, exist_ok=True)
    task = task_for(a)
    tail = max(1, min(a.tail, steps))
    os.makedirs(os.path.join(a.out, "runs"), exist_ok=True)
    slots = [(g, k) for k in range(a.concurrent) for g in gpus]
    threads = a.threads or max(1, (os.cpu_count() or 1) // (len(slots) if a.device == "cpu" else 1))
    runs = [Run(r, s, a.out, steps) for s in seeds for r in recipes]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        ap.error("two recipes give the same run name")
    analyze = set(x for x in a.analyze_recipes.split(",") if x)
    t0 = time.monotonic()
    deadline = t0 + a.budget_s if a.budget_s > 0 else None
    print(f"sweep: {len(runs)} runs ({len(recipes)} recipes × {len(seeds)} seeds), {steps} steps × "
          f"{tokens_per_step} tokens = {steps * tokens_per_step / 1e6:.2f}M tokens each; validation: "
          f"{val_batches} batches ({val_batches * B * T} of {val_tokens} tokens); {len(slots)} at once"
          f"{f'; budget {a.budget_s:.0f} s' if deadline else ''}", flush=True)
    with open(os.path.join(a.out, "sweep_args.json"), "w") as f:
        json.dump({"recipes": recipes, "seeds": seeds, "train_args": train_args, "data": a.data,
                   "steps": steps, "tokens_per_step": tokens_per_step, "val_tokens": val_tokens,
                   "val_batches": val_batches, "tail": tail, "device": a.device, "task": task,
                   "task_limit": a.task_limit}, f, indent=1)

    stopping = False

    def on_signal(sig, frame):  # pass a Ctrl-C / SIGTERM on to the runs: they checkpoint and stop
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    free = list(slots)
    last_report = 0.0
    term_sent = None

    def launch(run):
        slot = free.pop(0)
        resume = run.has_ckpt()
        cmd = [a.bin, "train", *train_args, "--recipe", recipe_spec(run.recipe, run.seed, not a.no_sr_seed),
               "--seed", str(run.seed), "--data", a.data, "--out", run.dir, "--val-batches", str(val_batches),
               "--ckpt-every", str(ckpt_every), "--keep", "1", "--device", a.device]
        if a.device == "cuda":
            cmd += ["--gpu", str(slot[0])]
        else:
            cmd += ["--threads", str(threads)]
        if a.analyze_every > 0 and run.recipe.split(",")[0] in analyze:
            cmd += ["--analyze-every", str(a.analyze_every)]
        if resume:
            cmd.append("--resume")
        os.makedirs(run.dir, exist_ok=True)
        log = open(os.path.join(run.dir, "train.out"), "a")
        log.write(f"# sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
        log.flush()
        run.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        run.slot, run.t_start, run.launched = slot, time.monotonic(), True
        print(f"sweep: {'resume' if resume else 'start '} {run.name}{f' on gpu {slot[0]}' if slot[0] is not None else ''}",
              flush=True)

    ds_failed = {}  # run name: error line of its downstream eval

    def finish(run, rc):
        m = run.meta()
        m["wall_s"] = m.get("wall_s", 0.0) + time.monotonic() - run.t_start
        m["segments"] = m.get("segments", 0) + 1
        run.save_meta(m)
        run.proc = None
        rows = read_log(os.path.join(run.dir, "log.csv"))
        last = int(rows[-1]["step"]) if rows else 0
        if rc == 0 and last == run.steps and rows[-1].get("val_loss") is not None:
            atomic_write(os.path.join(run.dir, "DONE"), f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            print(f"sweep: done   {run.name}: val {rows[-1]['val_loss']:.4f}", flush=True)
            if task and not stopping and term_sent is None:  # on the run's slot (its GPU) before it goes back
                err = downstream(a, run, task, threads, run.slot[0])
                if err:
                    ds_failed[run.name] = err
                    print(f"sweep: {err}", flush=True)
        elif rc == 0:
            print(f"sweep: paused {run.name} at step {last}", flush=True)
        elif term_sent is not None and rc in (-signal.SIGKILL, -signal.SIGTERM):
            print(f"sweep: paused {run.name}: killed at the budget, resumes from its last checkpoint", flush=True)
        else:
            run.failed = True
            tail_lines = open(os.path.join(run.dir, "train.out"), errors="replace").read().splitlines()[-3:]
            print(f"sweep: FAILED {run.name} (exit {rc}): {' / '.join(tail_lines)}", flush=True)
        free.append(run.slot)

    while True:
        now = time.monotonic()
        for run in runs:
            if run.proc is not None and (rc := run.proc.poll()) is not None:
                finish(run, rc)
        left = deadline - now if deadline else None
        if (stopping or (deadline and left <= a.stop_grace_s)) and term_sent is None:
            term_sent = now
            for run in runs:
                if run.proc is not None:
                    run.proc.send_signal(signal.SIGTERM)
            if any(r.proc for r in runs):
                print("sweep: time is up; the runs write checkpoints and stop", flush=True)
        if term_sent is not None and now - term_sent > a.stop_grace_s:
            for run in runs:
                if run.proc is not None:
                    run.proc.kill()
        if term_sent is None:
            for run in runs:
                if not free:
                    break
                if run.proc is None and not run.done and not run.failed and not run.launched:
                    if left is not None and left < a.min_start_s + a.stop_grace_s:
                        break
                    launch(run)
        running = [r for r in runs if r.proc is not None]
        if now - last_report >= a.report_s or not running:
            last_report = now
            lines, remaining_tok, agg = [], 0, 0.0
            for run in runs:
                line, step, tps = progress_line(run, tokens_per_step, now)
                lines.append(line)
                if not run.done:
                    remaining_tok += (run.steps - step) * tokens_per_step
                if run.proc and tps:
                    agg += tps
            ndone = sum(r.done for r in runs)
            head = (f"sweep {time.strftime('%H:%M:%S')}: {ndone}/{len(runs)} done, {len(running)} running, "
                    f"elapsed {fmt_s(now - t0)}"
                    f"{f', budget left {fmt_s(left)}' if left is not None else ''}, "
                    f"all remaining at {agg:.0f} tok/s: {fmt_s(remaining_tok / agg) if agg else '?'}")
            atomic_write(os.path.join(a.out, "progress.txt"), head + "\n" + "\n".join(lines) + "\n")
            if running:
                print(head + "\n  " + "\n  ".join(lines), flush=True)
        if not running:
            pending = [r for r in runs if not r.done and not r.failed and not r.launched]
            if term_sent is not None or not pending or not free:
                break
            if left is not None and left < a.min_start_s + a.stop_grace_s:
                break
        time.sleep(0.2 if a.report_s < 1 else 1.0)

    # finished runs not scored yet (an earlier call stopped first, or other task options), time allowing
    if task and not stopping and (deadline is None or time.monotonic() < deadline):
        for run in runs:
            if run.done and run.name not in ds_failed:
                err = downstream(a, run, task, threads, gpus[0])
                if err:
                    ds_failed[run.name] = err
                    print(f"sweep: {err}", flush=True)
    ok = write_results(a.out, runs, tail, val_tokens, val_batches, B, T) and not ds_failed
    ndone = sum(r.done for r in runs)
    nfail = sum(r.failed for r in runs)
    print(f"sweep: {ndone}/{len(runs)} runs done, {nfail} failed, {len(runs) - ndone - nfail} unfinished; "
          f"results in {os.path.join(a.out, 'sweep.csv')}", flush=True)
    return 0 if ok and nfail == 0 else 1


def write_results(out, runs, tail, val_tokens, val_batches, B, T):
    rows = []
    for run in runs:
        log = read_log(os.path.join(run.dir, "log.csv"))
        init, data, params = read_hashes(os.path.join(run.dir, "train.out"))
        step = int(log[-1]["step"]) if log else 0
        final_val = log[-1]["val_loss"] if log and run.done else None
        tail_rows = [r for r in log if r["step"] > run.steps - tail] if run.done else []
        tail_mean = sum(r["loss"] for r in tail_rows) / len(tail_rows) if tail_rows else None
        train_s = sum((log[i]["tokens"] - (log[i - 1]["tokens"] if i else 0)) / log[i]["tokens_per_s"]
                      for i in range(len(log)) if log[i].get("tokens_per_s"))
        status = "done" if run.done else "failed" if run.failed else "partial" if step else "pending"
        ds = {}
        if run.done:
            try:
                with open(os.path.join(run.dir, "downstream.json")) as f:
                    ds = json.load(f)
            except (FileNotFoundError, ValueError):
                ds = {}
        dsv = {k: (f"{ds[k]:.6f}" if k in ds else "") for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        rows.append({"recipe": run.recipe, "seed": run.seed, "status": status, "steps_done": step,
                     "steps": run.steps, "tokens": int(log[-1]["tokens"]) if log else 0,
                     "final_val_loss": f"{final_val:.6f}" if final_val is not None else "",
                     "val_tokens": val_tokens, "val_batches": val_batches,
                     "train_loss_tail": f"{tail_mean:.6f}" if tail_mean is not None else "",
                     "tail_steps": len(tail_rows),
                     "tokens_per_s": f"{log[-1]['tokens'] / train_s:.1f}" if train_s > 0 else "",
                     "train_s": f"{train_s:.1f}", "wall_s": f"{run.meta().get('wall_s', 0.0):.1f}",
                     "params": params, "init_hash": init, "data_hash": data if run.done else "",
                     "run_dir": os.path.relpath(run.dir, out), "task": ds.get("task", ""),
                     "task_items": ds.get("items", ""), **dsv})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(os.path.join(out, "sweep.csv"), buf.getvalue())
    # pairing: one init hash per seed (distinct between seeds), one data hash for every finished run
    problems, lines = [], []
    by_seed = {}
    for r in rows:
        if r["init_hash"]:
            by_seed.setdefault(r["seed"], set()).add(r["init_hash"])
    for seed, hs in sorted(by_seed.items()):
        lines.append(f"seed {seed}: init hash {' '.join(sorted(hs))}")
        if len(hs) > 1:
            problems.append(f"seed {seed}: the recipes start from different weights ({len(hs)} init hashes)")
    firsts = [next(iter(hs)) for hs in by_seed.values() if len(hs) == 1]
    if len(set(firsts)) < len(firsts):
        problems.append("two seeds start from the same weights")
    data = {r["data_hash"] for r in rows if r["data_hash"]}
    lines.append(f"data hash of the finished runs: {' '.join(sorted(data)) or '-'}")
    if len(data) > 1:
        problems.append(f"the finished runs read different tokens ({len(data)} data hashes)")
    verdict = "pairing: ok" if not problems else "pairing: MISMATCH: " + "; ".join(problems)
    atomic_write(os.path.join(out, "pairing.txt"), verdict + "\n" + "\n".join(lines) + "\n")
    print(verdict, flush=True)
    return not problems


if __name__ == "__main__":
    sys.exit(main())
