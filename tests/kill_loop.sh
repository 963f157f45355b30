#!/usr/bin/env bash
# kill_loop.sh — crash consistency of training: a tiny run with a checkpoint
# every step is killed with SIGKILL at seeded random moments (during steps,
# log writes and checkpoint writes alike), each kill followed by --resume,
# until it finishes. The final checkpoint (model.safetensors, state.bin,
# config.json, train.json) must equal an uninterrupted run's byte for byte,
# and log.csv too but for its wall-clock column (tokens_per_s).
#
#   bash tests/kill_loop.sh [BIN] [KILLS] [SEED]   (defaults build/averis 8 1)
#
# Prints one line "kill loop: N kills (M during a checkpoint write), S steps,
# T s: final checkpoint and log equal" and exits 0, or names what differed.
set -u
BIN=${1:-build/averis}
KILLS=${2:-8}
SEED=${3:-1}
STEPS=$((2 * KILLS + 4))
base=/tmp; [[ -d /dev/shm && -w /dev/shm ]] && base=/dev/shm # no disk: fsyncs are free, kills still land mid-write
T=$(mktemp -d "$base/averis_kill.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "kill loop: FAIL $*"; exit 1; }
now_ms() { date +%s%3N; }

# --- a tiny model on a tiny corpus -------------------------------------------
for i in 1 2; do cat README.md; done > "$T/doc.txt"
"$BIN" prepare --out "$T/d" --vocab 300 "$T/doc.txt" >"$T/prep" 2>&1 || fail "prepare: $(cat "$T/prep")"
cat > "$T/cfg.json" <<'JSON'
{"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64}
JSON
TR=("$BIN" train --config "$T/cfg.json" --data "$T/d" --recipe averis --batch 1 --seq 8 --steps "$STEPS"
    --ckpt-every 1 --keep 2 --val-every 3 --val-batches 1 --seed 7 --threads 1 --quiet)
final=$(printf 'ckpt_%08d' "$STEPS")

# --- the uninterrupted reference, and a one-step run: the time of a step -------
t0=$(now_ms)
"${TR[@]}" --steps 1 --out "$T/probe" >"$T/probe.log" 2>&1 || fail "one-step run: $(cat "$T/probe.log")"
probe_ms=$(( $(now_ms) - t0 ))
t0=$(now_ms)
"${TR[@]}" --out "$T/ref" >"$T/ref.log" 2>&1 || fail "reference run: $(cat "$T/ref.log")"
ref_ms=$(( $(now_ms) - t0 ))
step_ms=$(( (ref_ms - probe_ms) / (STEPS - 1) + 1 ))

# --- the killed run ------------------------------------------------------------
# delays (seeded LCG): base + 0..1 step, with base learned as the run goes
# (longer after a kill that left no new checkpoint, shorter after one that
# left two), so a run advances about one step per kill and kills land at every
# phase: start-up, step, log, checkpoint, pruning; one kill in eight is
# anywhere in 0..base (the start-up)
rng=$SEED
lcg() { rng=$(( (rng * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff )); r=$(( rng >> 20 )); }
base_ms=0
next_delay_ms() { # sets d
    lcg; local a=$r
    lcg
    if (( a % 8 == 0 )); then d=$(( r % (base_ms + 1) )); else d=$(( base_ms + r % (step_ms + 1) )); fi
}
ckpt_step() { local l; l=$(cat "$T/run/latest" 2>/dev/null); l=${l#ckpt_}; echo $(( 10#${l:-0} )); }
kills=0; in_ckpt=0; attempts=0; t0=$(now_ms)
while :; do
    attempts=$((attempts + 1))
    (( attempts > 20 * KILLS + 20 )) && fail "no end after $attempts attempts ($kills kills)"
    [[ -d $T/run/$final ]] && break # finished, killed on its way out
    extra=(); [[ -s $T/run/latest ]] && extra=(--resume)
    touch "$T/mark"
    "${TR[@]}" --out "$T/run" "${extra[@]}" >"$T/run.log" 2>&1 &
    pid=$!
    if (( kills < KILLS )); then
        before=$(ckpt_step)
        next_delay_ms # sets d (not $(...): the LCG state lives in this shell)
        sleep "$((d / 1000)).$(printf '%03d' $((d % 1000)))"
        if kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null
            kills=$((kills + 1))
            gained=$(( $(ckpt_step) - before ))
            if (( gained == 0 )); then base_ms=$(( base_ms + step_ms / 2 + 1 )); elif (( gained > 1 && base_ms > step_ms )); then base_ms=$(( base_ms - step_ms )); fi
            # a checkpoint (or a file of one) half-written when it died
            [[ -n $(find "$T/run" -maxdepth 2 -name '*.tmp*' -newer "$T/mark" 2>/dev/null) ]] && in_ckpt=$((in_ckpt + 1))
            continue
        fi
    fi
    wait "$pid"; rc=$?
    [[ $rc -eq 0 ]] || fail "a resumed run failed (exit $rc) after $kills kills: $(tail -3 "$T/run.log")"
    [[ -d $T/run/$final ]] && break
done
run_ms=$(( $(now_ms) - t0 ))

# --- nothing lost --------------------------------------------------------------
for f in model.safetensors state.bin config.json train.json; do
    cmp -s "$T/ref/$final/$f" "$T/run/$final/$f" || fail "$final/$f differs from the uninterrupted run after $kills kills"
done
cut -d, -f1-6,8 "$T/ref/log.csv" > "$T/ref.csv"
cut -d, -f1-6,8 "$T/run/log.csv" > "$T/run.csv"
cmp -s "$T/ref.csv" "$T/run.csv" || fail "log.csv differs after $kills kills: $(diff "$T/ref.csv" "$T/run.csv" | head -4 | tr '\n' ' ')"
[[ $(wc -l < "$T/run.csv") -eq $((STEPS + 1)) ]] || fail "log.csv has $(wc -l < "$T/run.csv") lines, want $((STEPS + 1))"
echo "kill loop: step ${step_ms} ms, delay base ${base_ms} ms at the end; $kills kills ($in_ckpt during a checkpoint write), $STEPS steps, $((run_ms / 1000)).$(printf '%03d' $((run_ms % 1000))) s (reference $((ref_ms / 1000)).$(printf '%03d' $((ref_ms % 1000))) s): final checkpoint and log equal"
