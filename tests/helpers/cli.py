"""`python -m sae_sweep` in a subprocess, as a user runs it, on the real config shrunk to seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Overrides that shrink the real default config to a seconds-long run.
SMOKE = ["experiment=smoke", "train.num_samples=20000", "train.eval_every=10000", "data.eval_size=512",
         "train.progress=false"]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m sae_sweep ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "sae_sweep", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
