#!/usr/bin/env bash
# The generalization study of the feature-count estimate (README, "Estimates you can trust"):
# thirty toy settings the estimators were not calibrated on (docs/generalization.md), each a coarse sweep (gen_<x> recipes), then up to three
# rounds of refinement, then the table of estimates and verdicts against the true h.
#   bash scripts/generalization.sh            all of them (tuning set a-ad, held-back ae-ag)
#   bash scripts/generalization.sh a b c d    only these settings
# Each setting trains packed (the recipes' launcher: one process, a lane per core, small SAEs stacked).
# Runtime: see docs/generalization.md. Resumable: re-run the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(a b c d e f g h i j k l m n o p q r s t u v w x y z aa ab ac ad ae af ag)
LAUNCH=(train.progress=false logger.wandb.mode=disabled)
for s in "${SETTINGS[@]}"; do  # each setting whole (coarse, then refinement) before the next
  "$PY" -m sae_sweep -m "experiment=gen_$s" "${LAUNCH[@]}"
  if [ "${SAE_SWEEP_REFINE:-1}" = 1 ]; then
    "$PY" -m sae_sweep.refine "outputs/gen_$s" --rounds 3 -- "${LAUNCH[@]}"
  fi
done
"$PY" scripts/generalization_table.py "${SETTINGS[@]}"
