"""Planted sweep tables for the estimators' tests: cells whose h is known, no training, no files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# J = 16 .. 512 in log2 steps of 0.5 (16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512).
LOG_GRID = np.array([round(16 * 2 ** (k / 2)) for k in range(11)])
POW2_GRID = [16, 32, 64, 128, 256]
CAL_GRID = [16, 32, 48, 64, 96, 128, 192, 256]  # the calibration recipe's J grid
ALPHAS = [0.1, 0.3, 1.0]


# --- builders ------------------------------------------------------------------------------------
def planted_alive(j: np.ndarray, h: float, slope: float) -> np.ndarray:
    """Every latent alive up to h, then alive grows as J**slope (slope 0: a flat plateau at h)."""
    j = j.astype(float)
    return np.where(j <= h, j, h * (j / h) ** slope)


def build_dead_cells(h: float, *, seeds: tuple[int, ...] = (0, 1, 2), noise: float = 0.02,
                     alphas: list[float] = ALPHAS, grid: np.ndarray = LOG_GRID) -> pd.DataFrame:
    """Cells whose alive count plateaus at h (times a small per-seed factor), never above J."""
    rng = np.random.default_rng(0)
    rows = []
    for alpha in alphas:
        for seed in seeds:
            plateau = h * (1 + noise * rng.standard_normal())
            for j in grid:
                rows.append({"alpha": alpha, "dict_size": int(j), "seed": seed,
                             "alive": float(min(j, plateau)), "dead": float(j - min(j, plateau))})
    return pd.DataFrame(rows)


def build_reproduced_cells(h: int, *, seeds: tuple[int, ...] = (0, 1), alphas: list[float] = ALPHAS,
                           grid: list[int] = CAL_GRID, floor: float = 0.6, surplus: float = 0.5,
                           twins: float = 0.8) -> pd.DataFrame:
    """Cells shaped like the calibration's: every latent fires (no dead latents at all), but only some are
    reproduced by the other seed: a share ``floor`` below h (blends), all at h, ``surplus`` of the rest
    beyond h (seed-specific splits, of which a share ``twins`` are twins of atoms the dictionary has:
    ``distinct`` counts them once). Alive never bends: the firing-only hinge has nothing to find."""
    rows = []
    for alpha in alphas:
        for seed in seeds:
            for j in grid:
                rep = floor * j if j < h else h + surplus * (j - h)
                distinct = floor * j if j < h else h + (1 - twins) * surplus * (j - h)
                rows.append({"alpha": alpha, "dict_size": j, "seed": seed, "alive": float(j), "dead": 0.0,
                             "reproduced": rep * (1 - 0.01 * seed), "distinct": distinct * (1 - 0.01 * seed)})
    return pd.DataFrame(rows)


def planted_loss(alpha: float, j: float, h: float, c: float = 0.5) -> float:
    """Loss flat in J from h on, rising quadratically in log2(h / J) below it."""
    return (1.0 + alpha) * (1.0 + c * max(0.0, math.log2(h / j)) ** 2)


def build_loss_cells(h: float, *, alphas: list[float] = ALPHAS, seeds: tuple[int, ...] = (0, 1, 2),
                     grid: list[int] = POW2_GRID, noise: float = 1e-4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [{"alpha": a, "dict_size": j, "seed": s,
             "loss": planted_loss(a, j, h) * (1 + noise * rng.standard_normal())}
            for a in alphas for s in seeds for j in grid]
    return pd.DataFrame(rows)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
