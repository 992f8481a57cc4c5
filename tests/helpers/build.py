"""Builders: tests compose the real config and override only what makes it small."""

from __future__ import annotations

import torch

from sae_sweep.config import LoggerConfig, RunConfig, SAEConfig, ToyDataConfig, TrainConfig, WandbConfig
from sae_sweep.data.toy import ToyFeatures
from sae_sweep.sae import SAE
from sae_sweep.train import EvalSet


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


def train_setup(k: int = 1, j: int = 64, **train_kw) -> tuple[ToyFeatures, SAE, TrainConfig, EvalSet]:
    """Toy data (n=16, h=32), an SAE of j latents and k members, a TrainConfig and its eval set."""
    data = ToyFeatures(ToyDataConfig(n=16, h=32, mean_active=3.0, eval_size=2048, correlation=0.3))
    sae = SAE(16, j, k=k, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(**{"batch_size": 128, "num_samples": 200_000, "eval_every": 50_000, "progress": False,
                         **train_kw})
    eval_set = EvalSet(data.eval_set(), data.ground_truth.features_HN)
    return data, sae, cfg, eval_set
