"""Shared builders: tests compose the real config and override only what makes it small."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sae_sweep.config import LoggerConfig, RunConfig, SAEConfig, ToyDataConfig, TrainConfig, WandbConfig

REPO = Path(__file__).resolve().parent.parent


def build_cfg(
    *,
    data: dict | None = None,
    train: dict | None = None,
    sae: dict | None = None,
    wandb_mode: str = "disabled",
    **top,
) -> RunConfig:
    """A small RunConfig (n=16, h=32, J=64, 20K samples) with any field overridden."""
    d = {"n": 16, "h": 32, "mean_active": 3.0, "eval_size": 1024, **(data or {})}
    t = {"batch_size": 128, "num_samples": 20_000, "eval_every": 10_000, "progress": False, **(train or {})}
    base = {"alpha": 0.3, "dict_size": 64, "seed": 0, "name": "test", **top}
    return RunConfig(
        data=ToyDataConfig(**d),
        train=TrainConfig(**t),
        sae=SAEConfig(**(sae or {})),
        logger=LoggerConfig(wandb=WandbConfig(mode=wandb_mode)),
        **base,
    )


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m sae_sweep ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "sae_sweep", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


# Overrides that shrink the real default config to a seconds-long run.
SMOKE = ["experiment=smoke", "train.num_samples=20000", "train.eval_every=10000", "data.eval_size=512",
         "train.progress=false"]


@pytest.fixture
def small_cfg() -> RunConfig:
    return build_cfg()


__all__ = ["REPO", "SMOKE", "build_cfg", "replace", "run_cli"]
