"""Activation files for tests: float32 rows with a known coordinate, saved as .npy (+ metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROWS, N = 5000, 16


def indexed_rows(rows: int = ROWS, n: int = N, seed: int = 0) -> np.ndarray:
    """float32 rows whose coordinate 0 is the row index, the rest random."""
    y = np.random.default_rng(seed).standard_normal((rows, n)).astype(np.float32)
    y[:, 0] = np.arange(rows)
    return y


def save_rows(tmp_path: Path, y: np.ndarray, name: str = "acts.npy", meta: dict | None = None) -> Path:
    path = tmp_path / name
    np.save(path, y)
    if meta is not None:
        Path(f"{path}.json").write_text(json.dumps(meta))
    return path
