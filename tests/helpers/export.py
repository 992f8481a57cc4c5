"""A trained SAE on planted activations, for the SAELens export tests (in-process and in SAELens's venv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sae_sweep.config import ActivationsDataConfig, RunConfig, TrainConfig
from sae_sweep.run import run
from sae_sweep.sae import SAE


def activation_file(tmp_path: Path, rows: int = 6000, n: int = 12) -> Path:
    """Planted sparse activations far from the origin and far from unit scale, so both folds matter."""
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(24, n))
    codes = rng.uniform(0, 1, (rows, 24)) * (rng.uniform(size=(rows, 24)) < 0.15)
    y = 7.0 * codes @ atoms + rng.normal(3.0, 1.0, size=n)
    path = tmp_path / "acts.npy"
    np.save(path, y.astype(np.float32))
    return path


def activation_run(tmp_path: Path, dict_size: int, scale: str = "unit_norm") -> tuple[Path, RunConfig]:
    cfg = RunConfig(data=ActivationsDataConfig(path=str(activation_file(tmp_path)), eval_size=512,
                                               chunk_rows=2048, center=True, scale=scale),
                    dict_size=dict_size, alpha=0.05, name="test",
                    train=TrainConfig(batch_size=128, num_samples=4000, eval_every=4000, progress=False))
    cfg.logger.wandb.mode = "disabled"
    run_dir = tmp_path / "run"
    assert run(cfg, run_dir)["status"] == "completed"
    return run_dir, cfg


def raw_and_map(run_dir: Path, cfg: RunConfig):
    from sae_sweep.data.activations import ActivationShards

    shards = ActivationShards(cfg.data)
    y_raw = torch.from_numpy(np.load(cfg.data.path)[-64:].astype(np.float32))
    return y_raw, torch.from_numpy(shards.mean_N), shards.scale


def random_sae(n: int, j: int, seed: int = 0) -> SAE:
    """An SAE with asymmetric encoder and non-zero biases, so a wrong transpose or sign shows."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(n, j, generator=g)
    with torch.no_grad():
        sae.W_enc_KNJ.copy_(torch.randn(1, n, j, generator=g) / n ** 0.5)
        sae.b_enc_KJ.copy_(0.1 * torch.randn(1, j, generator=g))
        sae.b_dec_KN.copy_(0.5 * torch.randn(1, n, generator=g))
    return sae


def ours(sae: SAE, y_BN: torch.Tensor, mean_N: torch.Tensor | None = None, scale: float = 1.0):
    """Our codes and raw-space reconstructions of raw inputs y: normalise, apply, map back."""
    mean_N = torch.zeros(y_BN.shape[1]) if mean_N is None else mean_N
    with torch.no_grad():
        z_KBN, c_KBJ = sae((y_BN - mean_N) / scale)
    return c_KBJ[0], z_KBN[0] * scale + mean_N
