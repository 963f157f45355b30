#!/usr/bin/env bash
# run.sh — the whole suite (`make test`): the include graph check
# (scripts/check_includes.py), then the unit tests and the CLI tests, first
# in the normal build (then the Python package's tests), then again under
# ASan+UBSan. Prints a summary line "N passed, N failed" last and exits
# non-zero on any failure.
set -u
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
total_pass=0; total_fail=0; total_skip=0; broken=0
run_flavour() { # run_flavour NAME MAKE_ARGS...
    local name=$1; shift
    echo "== $name: build"
    if ! make -s -j"$JOBS" "$@" build-tests >/dev/null; then
        echo "== $name: BUILD FAILED"; broken=1; return
    fi
    local dir; dir=$(make -s "$@" print-build)
    for cmd in "$dir/test_averis" "bash tests/test_cli.sh $dir/averis" "bash tests/test_tasks.sh $dir/averis"; do
        echo "== $name: $cmd"
        local log; log=$(mktemp)
        $cmd 2>&1 | tee "$log" | grep -v '^ok ' ; local rc=${PIPESTATUS[0]}
        local line; line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
        rm -f "$log"
        if [[ -z "$line" ]]; then echo "== $name: $cmd produced no summary (exit $rc)"; broken=1; continue; fi
        local p f; read -r p _ f _ <<<"${line//,/}"
        total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
        [[ $rc -ne 0 && $f -eq 0 ]] && { echo "== $name: $cmd exited $rc"; broken=1; }
    done
}
# The include graph (once: it does not depend on the build): the checker's
# own cases, then the tree, no cycle and no upward edge.
for args in --self-test ""; do
    echo "== include graph: scripts/check_includes.py $args"
    # shellcheck disable=SC2086
    if python3 scripts/check_includes.py $args; then total_pass=$((total_pass + 1))
    else total_fail=$((total_fail + 1)); fi
done
# The Python package (python/, pip install . into build/pyvenv, which sees
# the system's numpy and pytest) and its pytest suite against the CLI just
# built. Once, in the release flavour only. pytest's "no tests ran" (exit 5)
# counts as a failure.
run_python() {
    local bin; bin=$(make -s WERROR="${WERROR:-0}" print-build)/averis
    local venv=build/pyvenv log rc
    echo "== python: pip install . && pytest python/tests"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    if ! { [[ -x $venv/bin/python ]] || python3 -m venv --system-site-packages "$venv"; } \
        || ! "$venv/bin/python" -m pip install -q --no-deps . ; then
        echo "== python: INSTALL FAILED"; broken=1; return
    fi
    log=$(mktemp)
    AVERIS_BIN=$bin "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    local line p f e
    line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped)|no tests ran' "$log" | tail -1)
    rm -f "$log"
    p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    e=$(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f + e))
    if [[ $rc -eq 5 || $p -eq 0 ]]; then echo "== python: no tests ran (pytest exit $rc)"; broken=1
    elif [[ $rc -ne 0 && $((f + e)) -eq 0 ]]; then echo "== python: pytest exited $rc"; broken=1; fi
}
# The Hugging Face tokenizer (tests/test_hf_tokenizer.py: tokenizer.json gives
# averis's ids on the default corpus's validation text and adversarial input),
# with the venv's Python (it sees the `tokenizers` that scripts/setup.sh
# installs). Skipped, and counted so, only when `tokenizers` is missing.
run_hf() {
    local bin py=python3 log rc line p f s
    bin=$(make -s WERROR="${WERROR:-0}" print-build)/averis
    [[ -x build/pyvenv/bin/python ]] && py=build/pyvenv/bin/python
    echo "== hf tokenizer: tests/test_hf_tokenizer.py"
    log=$(mktemp)
    "$py" tests/test_hf_tokenizer.py "$bin" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    rm -f "$log"
    if [[ -z $line ]]; then echo "== hf tokenizer: no summary (exit $rc)"; broken=1; return; fi
    p=$(grep -oE '^[0-9]+' <<<"$line"); f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+')
    s=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f)); total_skip=$((total_skip + s))
    [[ $rc -ne 0 && $f -eq 0 ]] && { echo "== hf tokenizer: exited $rc"; broken=1; }
}
run_flavour "release" WERROR="${WERROR:-0}"
[[ "${AVERIS_SKIP_PYTHON:-0}" != 1 && $broken -eq 0 ]] && run_python
[[ "${AVERIS_SKIP_PYTHON:-0}" != 1 && $broken -eq 0 ]] && run_hf
if [[ "${AVERIS_SKIP_ASAN:-0}" != 1 ]]; then
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
        run_flavour "asan+ubsan" BUILD=build-asan SAN=1 WERROR="${WERROR:-0}"
fi
[[ $broken -ne 0 ]] && total_fail=$((total_fail + 1))
if [[ $total_skip -gt 0 ]]; then echo "$total_pass passed, $total_fail failed, $total_skip skipped"
else echo "$total_pass passed, $total_fail failed"; fi
[[ $total_fail -eq 0 ]]
