#!/usr/bin/env python3
"""check_includes.py — the include graph obeys the layering (STYLE.md #6).

Reads every `#include "..."` among include/averis/*.h, src/*.{c,h}, tools/*,
cuda/**, tests/** and bench/**, maps each file to its module, and fails
(exit 1, naming the edge) on
  - an include cycle, and
  - an upward edge: a module may include only its own layer or lower.

A new module (e.g. include/averis/widget.h) must be added to LAYERS below;
until it is, the check fails and says so.

    python3 scripts/check_includes.py [--root DIR] [--self-test]
"""
import fnmatch
import os
import re
import sys
import tempfile

# The layers, low → high: a module may include its own layer or lower.
LAYERS = [
    ["hd", "status", "half"],
    ["nvfp4_spec", "io", "json", "comm"],  # files, JSON and the collectives know nothing of NVFP4
    ["nvfp4"],
    ["quant", "gemm"],
    ["qlinear", "model_spec", "moments"],  # moments: which AdamW moments a process holds
    ["model", "safetensors"],
    ["data", "tokenizer"],
    ["analysis"],
    ["cuda", "analysis_cuda"],    # the GPU model, the analysis on it
    ["backend"],                  # the table train.c steps through: CPU model or cuda
    ["dp"],                       # data parallel: a backend over a backend and a comm
    ["ckpt"],
    ["train"],
    ["tools", "tests", "bench"],
]

# Files whose module is not their base name; first match wins, then
# include/averis/NAME.h and src/NAME.{c,h} are module NAME.
MODULE_OF = [
    ("src/formats.c", "nvfp4"),
    ("src/nvfp4_*.c", "nvfp4"),
    ("src/internal.h", "nvfp4"),  # the tensor quantizer's private half
    ("src/moe.c", "model"),       # the Qwen3-MoE block is part of the model
    ("src/model_math.h", "model"),
    ("include/averis/moe.h", "model"),
    ("src/cuda_*.c", "cuda"),
    ("src/comm_*.c", "comm"),
    ("src/train_*.c", "train"),
    ("src/backend_*.c", "backend"),
    ("dev/*", "bench"),           # the kernel lab
    ("cuda/test_*", "tests"),
    ("cuda/*_check.*", "tests"),
    ("cuda/bench_*", "bench"),
    ("cuda/tool_util.cuh", "tools"),
    ("cuda/*", "cuda"),
    ("tools/*", "tools"),
    ("tests/*", "tests"),
    ("bench/*", "bench"),
]

SOURCE_EXT = (".c", ".h", ".cu", ".cuh", ".cpp", ".hpp", ".def")
SCAN = [("include/averis", False), ("src", False), ("tools", False), ("cuda", True), ("tests", True), ("bench", True), ("dev", True)]
# where "..." is looked for after the including file's directory: the build's
# -I, and cuda/ for device tests kept elsewhere (tests/cuda/)
INCLUDE_DIRS = ["include", "src", "cuda"]
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def module_of(path):
    for pattern, module in MODULE_OF:
        if fnmatch.fnmatch(path, pattern):
            return module
    m = re.fullmatch(r"include/averis/(\w+)\.h|src/(\w+)\.[ch]", path)
    return (m.group(1) or m.group(2)) if m else None


def layer_of():
    return {m: i for i, names in enumerate(LAYERS) for m in names}


def scan(root):
    files = []
    for top, recurse in SCAN:
        base = os.path.join(root, top)
        if not os.path.isdir(base):
            continue
        for dirpath, dirnames, names in os.walk(base):
            if not recurse:
                dirnames[:] = []
            files += [os.path.relpath(os.path.join(dirpath, n), root) for n in names if n.endswith(SOURCE_EXT)]
    return sorted(files)


def edges(root, files):
    """[(from, to, line)]; an include that resolves to no file is an error."""
    out, errors = [], []
    for f in files:
        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                cands = [os.path.dirname(f)] + INCLUDE_DIRS
                hit = next((os.path.normpath(os.path.join(d, m.group(1))) for d in cands
                            if os.path.isfile(os.path.join(root, d, m.group(1)))), None)
                if hit is None:
                    errors.append(f'{f}:{lineno}: #include "{m.group(1)}" resolves to no file')
                else:
                    out.append((f, hit, lineno))
    return out, errors


def find_cycle(graph):
    """One cycle as a list of files (first == last), or None."""
    state, stack = {}, []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in graph.get(u, ()):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                c = dfs(v)
                if c:
                    return c
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            c = dfs(u)
            if c:
                return c
    return None


def check(root):
    """The list of problems (empty: the graph is clean) and a summary line."""
    layer = layer_of()
    files = scan(root)
    es, problems = edges(root, files)
    where = "LAYERS at the top of scripts/check_includes.py"
    for f in sorted({f for f, _, _ in es} | {t for _, t, _ in es}):
        m = module_of(f)
        if m is None or m not in layer:
            problems.append(f"{f}: module '{m or os.path.basename(f)}' is not in {where}: add it to the layer it "
                            f"belongs to (MODULE_OF maps files whose module is not their name)")
    for f, t, lineno in es:
        mf, mt = module_of(f), module_of(t)
        if mf in layer and mt in layer and layer[mt] > layer[mf]:
            problems.append(f"{f}:{lineno}: upward include of {t}: {mf} (layer {layer[mf]}) may not include "
                            f"{mt} (layer {layer[mt]}); see {where}")
    graph = {}
    for f, t, _ in es:
        graph.setdefault(f, set()).add(t)
    graph = {k: sorted(v) for k, v in graph.items()}
    cycle = find_cycle(graph)
    if cycle:
        problems.append("include cycle: " + " -> ".join(cycle))
    return problems, f"include graph: {len(files)} files, {len(es)} edges"


def self_test():
    """The check fails on an upward edge, a cycle and an unknown module, and passes a clean tree."""
    cases = {
        "clean": ({"include/averis/status.h": "", "include/averis/io.h": '#include "averis/status.h"\n',
                   "src/io.c": '#include "averis/io.h"\n'}, None),
        "upward": ({"include/averis/io.h": '#include "averis/model.h"\n', "include/averis/model.h": ""},
                   "upward include"),
        "cycle": ({"include/averis/io.h": '#include "averis/json.h"\n',
                   "include/averis/json.h": '#include "averis/io.h"\n'}, "include cycle"),
        "unknown": ({"include/averis/widget.h": "", "src/io.c": '#include "averis/widget.h"\n'},
                    "module 'widget' is not in LAYERS"),
        "unresolved": ({"src/io.c": '#include "nowhere.h"\n'}, "resolves to no file"),
    }
    failed = 0
    for name, (tree, want) in cases.items():
        with tempfile.TemporaryDirectory() as root:
            for path, text in tree.items():
                os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
                with open(os.path.join(root, path), "w") as fh:
                    fh.write(text)
            problems, _ = check(root)
        ok = not problems if want is None else any(want in p for p in problems)
        if not ok:
            failed += 1
            print(f"  FAIL self-test {name}: expected {want or 'no problem'}, got {problems}", file=sys.stderr)
    print(f"check_includes self-test: {len(cases) - failed} of {len(cases)} cases as expected")
    return failed == 0


def main(argv):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if "--root" in argv:
        root = argv[argv.index("--root") + 1]
    if "--self-test" in argv:
        return 0 if self_test() else 1
    problems, summary = check(root)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{summary}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
