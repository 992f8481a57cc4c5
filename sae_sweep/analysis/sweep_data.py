"""A finished sweep read back from disk: its cells, their dictionaries and (toy data) the ground truth.

Everything comes from the run dirs (summary.json, sae.safetensors, latents.safetensors,
ground_truth.safetensors) through the sweep's results table, so any sweep dir can be analysed again.
No pickles are read.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sae_sweep.record import COMPLETED, CORRUPT, GROUND_TRUTH_FILE, LATENTS_FILE, WEIGHTS_FILE, read_tensors
from sae_sweep.table import collect_runs

# Columns of the results table that describe a run's outcome, not its configuration.
_NOT_CONFIG = {"run", "cell_key", "trial", "status", "message", "started_at", "finished_at", "samples",
               "train_time_s", "samples_per_s", "setup_time_s", "wall_time_s", "run_dir"}


def load_cells(sweep_dir: Path, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The completed cells of a sweep (one row per cell) with an absolute ``run_dir`` column; from
    ``table`` (its results table, just built) when given, else from the run dirs."""
    sweep_dir = Path(sweep_dir)
    table = collect_runs(sweep_dir) if table is None else table
    if table.empty:
        return table
    for run, message in table.loc[table["status"] == CORRUPT, ["run", "message"]].itertuples(index=False):
        print(f"analysis: skipped {run}: {message}", file=sys.stderr)
    cells = table[table["status"] == COMPLETED].copy()
    cells["run_dir"] = [str(sweep_dir / r) for r in cells["run"]]
    for col in ("dict_size", "seed"):
        cells[col] = cells[col].astype(int)
    cells["alpha"] = cells["alpha"].astype(float)
    return cells.reset_index(drop=True)


def group_columns(cells: pd.DataFrame) -> list[str]:
    """Swept config fields other than alpha, dict_size and seed (e.g. ``data.h``): each value is one dataset.

    Only fields some cell's command line set (the table's ``swept`` column) count: the table has a column
    for every config value, and one that merely differs between invocations does not make a dataset."""
    if "swept" not in cells.columns:  # a table from before the column (or built by hand): every dotted column
        swept = set(cells.columns)
    else:
        swept = {k for keys in cells["swept"].dropna() for k in str(keys).split(",") if k}
    return [c for c in cells.columns if "." in c and c in swept and c not in _NOT_CONFIG
            and cells[c].nunique(dropna=False) > 1]


def group_slug(label: dict[str, object]) -> str:
    """A file-name-safe name for a group (``data.h=64``), or ``all`` for a sweep with one group."""
    if not label:
        return "all"
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", ",".join(f"{k}={v}" for k, v in label.items()))


def split_groups(cells: pd.DataFrame) -> list[tuple[dict[str, object], pd.DataFrame]]:
    cols = group_columns(cells)
    if not cols:
        return [({}, cells)]
    return [(dict(zip(cols, key if isinstance(key, tuple) else (key,), strict=True)), g.reset_index(drop=True))
            for key, g in cells.groupby(cols, dropna=False)]


def read_latents(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Per-latent firing frequency and mean activation on the eval set (latents.safetensors)."""
    return read_tensors(Path(run_dir) / LATENTS_FILE)


def read_dictionary(run_dir: str | Path) -> np.ndarray:
    """The learned atoms as unit-norm rows, (J, N)."""
    w_dec_NJ = read_tensors(Path(run_dir) / WEIGHTS_FILE, {})["W_dec"]
    atoms = w_dec_NJ.T.astype(np.float64)
    return atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-12)


def read_ground_truth(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(true features as unit rows (h, N), firing probabilities (h,)), or None without ground truth."""
    path = Path(run_dir) / GROUND_TRUTH_FILE
    if not path.exists():
        return None
    t = read_tensors(path)
    return t["F"].T.astype(np.float64), t["probabilities"].astype(np.float64)


def has_weights(run_dir: str | Path) -> bool:
    """Whether a run saved its dictionary and latent statistics (train.save_weights=true)."""
    return (Path(run_dir) / WEIGHTS_FILE).exists() and (Path(run_dir) / LATENTS_FILE).exists()


def with_alive(cells: pd.DataFrame, min_frequency: float) -> pd.DataFrame:
    """Recount ``alive``/``dead`` as latents firing on more than ``min_frequency`` of eval samples.

    A run without latents.safetensors keeps the count of its summary (latents that ever fired).
    """
    out = cells.copy()
    alive = []
    for run_dir, summary_alive in zip(out["run_dir"], out["alive"], strict=True):
        if has_weights(run_dir):
            alive.append(int((read_latents(run_dir)["frequency"] > min_frequency).sum()))
        else:
            alive.append(int(summary_alive))
    out["alive"] = alive
    out["dead"] = out["dict_size"] - out["alive"]
    return out


def true_h(cells: pd.DataFrame) -> int | None:
    """The number of true features when the data is toy and every cell agrees on it."""
    if "h" not in cells.columns or cells["h"].isna().any() or cells["h"].nunique() != 1:
        return None
    if not Path(cells["run_dir"].iloc[0], GROUND_TRUTH_FILE).exists():
        return None
    return int(cells["h"].iloc[0])


def recovery_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per run and true feature: its firing probability and best cosine with any learned atom."""
    rows = []
    for _, cell in cells.iterrows():
        truth = read_ground_truth(cell["run_dir"])
        if truth is None or not has_weights(cell["run_dir"]):
            continue
        features_HN, prob_H = truth
        best_H = (features_HN @ read_dictionary(cell["run_dir"]).T).max(axis=1)
        rows.append(pd.DataFrame({"alpha": cell["alpha"], "dict_size": cell["dict_size"], "seed": cell["seed"],
                                  "feature": np.arange(len(prob_H)), "frequency": prob_H, "best_cos": best_H}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["alpha", "dict_size", "seed", "feature", "frequency", "best_cos"])
