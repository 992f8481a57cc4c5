#!/usr/bin/env bash
# The fixed cost of a small-SAE sweep, this checkout against another revision, in interleaved rounds:
# the quickstart's 24 jobs at 2,560 samples each (10 steps: training costs ~nothing), packed, W&B off, no
# refinement, so the wall time is start-up, composition, job set-up, records, the table and the report.
#   bash benchmarks/bench_fixed_cost.sh dec532f          # 3 rounds against revision dec532f
#   ROUNDS=5 bash benchmarks/bench_fixed_cost.sh HEAD~3
# Prints each round's two wall times and their ratio (this checkout / the other); ~5 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench_fixed_cost.sh REVISION}
ROUNDS=${ROUNDS:-3}
PY=$PWD/.venv/bin/python
OTHER=$(mktemp -d)/other
git worktree add -q --detach "$OTHER" "$REV"
trap 'git worktree remove --force "$OTHER"' EXIT
OUT=$(mktemp -d)
sweep() {  # $1: the checkout to run from (python -m puts it first on sys.path); prints seconds
  local t0 t1
  rm -rf "$OUT/sweep"
  t0=$(date +%s.%N)
  (cd "$1" && "$PY" -m sae_sweep -m experiment=quickstart train.num_samples=2560 train.eval_every=1280 \
    hydra.sweep.dir="$OUT/sweep" hydra.callbacks.report.refine_rounds=0 logger.wandb.mode=disabled \
    train.progress=false >"$OUT/log" 2>&1)
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
echo "round  $REV (s)  this (s)  this / $REV"
for r in $(seq "$ROUNDS"); do
  a=$(sweep "$OTHER"); b=$(sweep "$PWD")
  printf "%5d  %8.1f  %8.1f  %6.2f\n" "$r" "$a" "$b" "$(echo "$b / $a" | bc -l)"
done
