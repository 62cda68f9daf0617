#!/usr/bin/env bash
# Train the runs of one compare.py suite on a small CPU machine, JOBS runs side by side with THREADS threads each,
# and merge every run into the suite's table as soon as it ends, so a kill loses only the runs in flight (run the
# same command again: finished runs are skipped, killed ones resume from their last.pt).
#
#   SUITE=losses ARMS="ce_cutmix ce_copy_paste" SEEDS="0 1" bash benchmarks/cpu_claims.sh \
#       train.iters=3000 train.eval_interval=300
#   SUITE=merges ARMS="avg max" BASELINE=avg bash benchmarks/cpu_claims.sh train.iters=3000 train.eval_interval=300
#
# Settings (environment): SUITE (required), ARMS (required: experiment names), SEEDS ("0 1"),
# BASE (configs/camvid/ocr_hrnetv2_w18s_v2_half.yaml), RUNS_ROOT (runs/claims_half_3000),
# RESULTS (benchmarks/results/camvid_half_3000), JOBS (2), THREADS (1), BASELINE (the suite's),
# AFTER_EACH (a shell command run after each merge with ARM and SEED set, e.g. a git commit of RESULTS; add the
# folder first, or `git commit -- DIR` skips a suite's new, untracked table:
#   AFTER_EACH='D=benchmarks/results/camvid_half_3000; git add "$D" && git commit -q -m "$ARM seed $SEED" -- "$D"').
# Arguments: key=value overrides for every run (they must be the same each time: they name the table).
# Logs: RUNS_ROOT/logs/SUITE_ARM_seedSEED.log.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SUITE:?set SUITE (heads, losses, merges, saol, pfa, stn)}" "${ARMS:?set ARMS, e.g. ARMS=\"ce focal\"}"
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"0 1"}
BASE=${BASE:-configs/camvid/ocr_hrnetv2_w18s_v2_half.yaml}
RUNS_ROOT=${RUNS_ROOT:-runs/claims_half_3000}
RESULTS=${RESULTS:-benchmarks/results/camvid_half_3000}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
baseline=()
[ -n "${BASELINE:-}" ] && baseline=(--baseline "$BASELINE")
mkdir -p "$RUNS_ROOT/logs"

one_run() {  # ARM SEED OVERRIDES...: train, merge into RESULTS (compare.py locks the table), then AFTER_EACH
  local arm=$1 seed=$2 log="$RUNS_ROOT/logs/${SUITE}_${1}_seed$2.log"
  shift 2
  if OMP_NUM_THREADS=$THREADS "$PY" benchmarks/compare.py "$SUITE" --base "$BASE" --only "$arm" --seeds "$seed" \
      --runs-root "$RUNS_ROOT" --results-dir "$RESULTS" --no-progress "${baseline[@]}" "$@" > "$log" 2>&1; then
    echo "$(date +%H:%M) [$arm seed $seed] $(grep -E -m1 -o '(trained|resumed|reused|skipped \(done\)): val .*' "$log")"
  else
    echo "$(date +%H:%M) [$arm seed $seed] failed: see $log"
  fi
  if [ -n "${AFTER_EACH:-}" ]; then
    (flock 9; ARM=$arm SEED=$seed bash -c "$AFTER_EACH" || true) 9> "$RUNS_ROOT/logs/.after_each.lock"
  fi
}

for seed in $SEEDS; do
  for arm in $ARMS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    echo "$(date +%H:%M) [$arm seed $seed] training (log $RUNS_ROOT/logs/${SUITE}_${arm}_seed$seed.log)"
    one_run "$arm" "$seed" "$@" &
  done
done
wait
echo "$(date +%H:%M) done: $RESULTS/compare_$SUITE.md"
