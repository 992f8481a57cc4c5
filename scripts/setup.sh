#!/usr/bin/env bash
# Set up .venv for sae_sweep: the CPU torch wheel first (an unpinned torch would pull a multi-GB
# CUDA build), then the package in editable mode with its test extras. Idempotent and quiet;
# a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${SAE_SWEEP_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, sae_sweep; print(f'sae_sweep setup ok: torch {torch.__version__}')"
