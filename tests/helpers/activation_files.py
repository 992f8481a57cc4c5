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


def planted(tmp_path: Path, rows: int = 20_000, n: int = N, h: int = 24) -> Path:
    """y = sparse non-negative codes @ random unit features, float16."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((h, n))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    codes = rng.uniform(0.0, 1.0, (rows, h)) * (rng.uniform(size=(rows, h)) < 3.0 / h)
    return save_rows(tmp_path, (codes @ features).astype(np.float16), "planted.npy",
                 meta={"model": "planted", "layer": 0})
