"""The results table of a sweep: one row per cell, written as runs.parquet and runs.csv.

Rows come from the run dirs' records (cell.json, summary.json, trial.json, config.yaml or
.hydra/config.yaml), so the table can be rebuilt at any time from disk, whichever sweeper or launcher
produced the runs. A cell that ran more than once (a failed cell re-run by a resumed grid) appears
once: its completed run if any, else its latest attempt.

Columns: the base axes and status (``BASE``), then ``sweep`` (the sweep's name), ``run_dir`` (absolute),
``wandb_run_id``, ``objective`` (what the sweeper optimised, comma-separated when several), every run
config value as a dotted column (``train.lr``, ``data.h``, ...; not the ones that never change a
result, ``record.RESULT_NEUTRAL_KEYS``), ``swept`` (the config keys this cell's command line set: only those split a
sweep into datasets, see analysis/sweep_data.py), ``trainer_alpha``, ``device``, ``threads``, the
final metrics (``train_loss`` included), the timings and the start and end times. Integer columns are
pandas' nullable ``Int64`` throughout, so a failed run's gap never turns them into floats.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from sae_sweep.record import (
    CELL_FILE,
    COMPLETED,
    CONFIG_FILE,
    CORRUPT,
    DIVERGED,
    FAILED,
    HYDRA_CONFIG_FILE,
    INCOMPLETE,
    INTERRUPTED,
    PRUNED,
    RESULT_NEUTRAL_KEYS,
    RESULTS_CSV,
    RESULTS_FILE,
    SUMMARY_FILE,
    TRIAL_FILE,
    RecordError,
    check_finished,
    read_json,
    run_dirs,
)

log = logging.getLogger(__name__)

METRICS = ("mmcs", "mmcs_learned", "recovered_90", "recovered_99", "loss", "train_loss", "mse", "l1", "l1_sum",
           "fvu", "l0", "dead", "alive", "l1_norm", "h", "n", "converged", "loss_change", "atom_drift")
RUN_FIELDS = ("trainer_alpha", "device", "threads")
TIMINGS = ("samples", "train_time_s", "samples_per_s", "setup_time_s", "wall_time_s")
BASE = ("run", "cell_key", "trial", "status", "message", "alpha", "dict_size", "seed")
_NEVER_CONFIG = ("alpha", "dict_size", "seed", "name")  # top-level fields with columns of their own
STATUS_RANK = {COMPLETED: 0, PRUNED: 1, DIVERGED: 2, FAILED: 3, INTERRUPTED: 4, CORRUPT: 5, INCOMPLETE: 6}


def _typed(text: str) -> Any:
    """An override's value typed as YAML would type it (``16`` -> 16), else the text itself."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) else text


def _load_yaml(path: Path) -> Any:
    """A run's YAML record as an OmegaConf tree; None when missing or damaged (logged once, here)."""
    if not path.exists():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # any YAML damage: the callers fall back (other copy, overrides' text, dir name)
        log.warning(f"results table: {path}: not readable YAML ({type(exc).__name__})")
        return None


def _swept(overrides: list[str], cfg: Any) -> dict[str, Any]:
    """The value of every overridden run field, typed as in the resolved config ``cfg`` (the run's
    .hydra/config.yaml; None when unreadable: the values come from the overrides' text)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    keys = [k for k in keys if not k.startswith("hydra.") and k != "experiment"
            and not any(k == i or k.startswith(i + ".") for i in RESULT_NEUTRAL_KEYS)]
    # The base axes come from the config too, so a run that failed before training still has them.
    out: dict[str, Any] = {k: OmegaConf.select(cfg, k, default=None) for k in ("alpha", "dict_size", "seed")
                           if cfg is not None}
    for k in keys:
        value = OmegaConf.select(cfg, k, default=None) if cfg is not None else None
        if OmegaConf.is_config(value):  # a config group choice (data=activations): keep the option's name
            value = None
        if value is None:
            value = _typed(next(o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == k))
        out[k] = value
    return out


def _ignored(key: str) -> bool:
    return any(key == i or key.startswith(i + ".") for i in RESULT_NEUTRAL_KEYS)


def _config_values(run_dir: Path, hydra_cfg: Any) -> dict[str, Any]:
    """Every leaf of the run's config as a dotted key (lists as text), from config.yaml (as run) or
    Hydra's copy ``hydra_cfg`` (already read)."""
    tree: Any = None
    for loaded in (_load_yaml(run_dir / CONFIG_FILE), hydra_cfg):
        if loaded is None:
            continue
        try:
            tree = OmegaConf.to_container(loaded, resolve=True)
        except Exception:  # an unresolvable interpolation: the table still gets the other columns
            tree = OmegaConf.to_container(loaded, resolve=False)
        break
    if not isinstance(tree, dict):
        return {}
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif prefix and prefix not in _NEVER_CONFIG and not prefix.startswith("hydra") and not _ignored(prefix):
            out[prefix] = str(node) if isinstance(node, list) else node

    walk(tree, "")
    return out


def _sweep_name(hydra_cfg: Any, summary: dict[str, Any] | None, sweep_dir: Path) -> str:
    """The sweep's name (the config's ``name``: outputs/<name>/), else the sweep dir's."""
    name = OmegaConf.select(hydra_cfg, "name", default=None) if hydra_cfg is not None else None
    return str(name or (summary or {}).get("group") or Path(sweep_dir).resolve().name)


def _objective(run_dir: Path, summary: dict[str, Any] | None) -> str | None:
    """What the sweeper optimised: the Optuna study's objectives, else the grid job's return value."""
    trial = read_json(run_dir / TRIAL_FILE)
    if trial and trial.get("objectives"):
        return ",".join(trial["objectives"])
    if trial and trial.get("metric"):
        return str(trial["metric"])
    if not summary:
        return None
    return "mmcs" if summary.get("mmcs") is not None or summary.get("h") is not None else "fvu"


def _nullable_integers(df: pd.DataFrame) -> pd.DataFrame:
    """Every column whose values are all integers (gaps allowed) as Int64."""
    for col in df.columns:
        values = df[col].dropna()
        if col in _INTEGER_COLUMNS:
            try:
                df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
            except (TypeError, ValueError, OverflowError):  # a record from before seeds were bounded
                df[col] = df[col].astype(str)
        elif df[col].dtype == object and len(values) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in values):
            df[col] = df[col].astype("Int64")
        elif pd.api.types.is_integer_dtype(df[col].dtype) and not pd.api.types.is_extension_array_dtype(df[col]):
            df[col] = df[col].astype("Int64")
    return df


# Columns that are integers whenever they have a value (a float or empty column of them comes from gaps).
_INTEGER_COLUMNS = ("trial", "dict_size", "seed", "samples", "dead", "alive", "h", "n", "threads")


def collect_runs(sweep_dir: Path) -> pd.DataFrame:
    """One row per cell under ``sweep_dir`` (empty frame with the base columns when there is none)."""
    rows: list[dict[str, Any]] = []
    for d in run_dirs(sweep_dir):
        cell = read_json(d / CELL_FILE) or {}
        summary = read_json(d / SUMMARY_FILE)
        status = summary.get("status", FAILED) if summary else INCOMPLETE
        message = (summary or {}).get("message", "")
        if status == COMPLETED:
            try:
                check_finished(d)
            except RecordError as exc:  # the analysis skips it; a resumed sweep trains it again
                status, message = CORRUPT, str(exc)
                log.warning(f"results table: {exc}; the cell is marked {CORRUPT}")
        row: dict[str, Any] = {"run": str(d.relative_to(sweep_dir)), "cell_key": cell.get("cell_key"),
                               "trial": cell.get("trial"), "status": status, "message": message}
        hydra_cfg = _load_yaml(d / HYDRA_CONFIG_FILE)  # read once per row: three columns' sources
        swept = _swept(list(cell.get("overrides") or []), hydra_cfg)
        config = _config_values(d, hydra_cfg)
        row.update(swept)
        row.update({"sweep": _sweep_name(hydra_cfg, summary, sweep_dir), "run_dir": str(d.resolve()),
                    "wandb_run_id": (summary or {}).get("wandb_run_id"), "objective": _objective(d, summary)})
        row.update({k: v for k, v in config.items() if k not in swept})
        row["swept"] = ",".join(sorted(k for k in swept if k not in ("alpha", "dict_size", "seed")))
        for k in ("alpha", "dict_size", "seed", *RUN_FIELDS, *METRICS, *TIMINGS):
            if summary and k in summary:
                row[k] = summary[k]
        row["started_at"] = pd.to_datetime(cell.get("started_at"), unit="s", utc=True)
        end = (d / SUMMARY_FILE).stat().st_mtime if summary else math.nan
        row["finished_at"] = pd.to_datetime(end, unit="s", utc=True)
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(BASE))
    df = _nullable_integers(pd.DataFrame(rows))
    df["_rank"] = df["status"].map(STATUS_RANK).fillna(9)
    df = df.sort_values(["_rank", "started_at"], ascending=[True, False])
    df = df.drop_duplicates("cell_key", keep="first").drop(columns="_rank")
    order = [c for c in BASE if c in df.columns] + [c for c in df.columns if c not in BASE]
    sort_cols = [c for c in ("trial", "run") if c in df.columns]
    return df[order].sort_values(sort_cols, na_position="last").reset_index(drop=True)


# This process's latest table per sweep dir and when it was built. A multirun's end builds it once (the
# sweeper's ``finally``); the callbacks after it (table, report) take it rather than read every run dir
# again, but only if it was built after their multirun started (``written_since``).
_WRITTEN: dict[Path, tuple[float, pd.DataFrame]] = {}


def write_results_table(sweep_dir: Path) -> pd.DataFrame:
    """Write runs.parquet and runs.csv into ``sweep_dir`` (atomically) and return the table."""
    sweep_dir = Path(sweep_dir)
    built = time.monotonic()
    df = collect_runs(sweep_dir)
    for name, write in ((RESULTS_FILE, lambda p: df.to_parquet(p, index=False)),
                        (RESULTS_CSV, lambda p: df.to_csv(p, index=False))):
        tmp = sweep_dir / f".{name}.{os.getpid()}.tmp"  # per process: several workers may share a sweep dir
        write(tmp)
        tmp.replace(sweep_dir / name)
    _WRITTEN[sweep_dir.resolve()] = (built, df)
    return df


def written_since(sweep_dir: Path, since: float) -> pd.DataFrame | None:
    """The table this process wrote for ``sweep_dir`` from run dirs read after ``since``
    (``time.monotonic()``), else None."""
    hit = _WRITTEN.get(Path(sweep_dir).resolve())
    return hit[1] if hit is not None and hit[0] >= since else None
