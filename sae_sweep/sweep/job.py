"""The job side of a sweep, called from ``__main__._task`` in a multirun.

It records which cell the run is (cell.json) and, when the run is an Optuna trial, reports each
evaluation to that trial through the shared storage so the study's pruner can stop it. The sweeper
leaves ``trial.json`` in the run dir before launching; reaching the trial through storage rather than
through the sweeper's memory is what makes pruning work in joblib workers or on SLURM nodes too.

A run dir belongs to one cell (sweep/cells.py): the sweepers give a cell whose dir name is taken a
dir of its own, and a job that still finds another cell's completed record in its dir (two sweeps of
one name started at the same moment, or Hydra's own basic sweeper) fails without touching its
summary, weights or metrics (Hydra has rewritten that dir's ``.hydra/`` by then: the sweepers'
choice of dir is what keeps it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from sae_sweep.sweep.cells import CELL_FILE, SUMMARY_FILE, TRIAL_FILE, cell_key, read_json, write_cell
from sae_sweep.sweep.kill import kill_point

if TYPE_CHECKING:  # Hydra imports the sweepers (and so this module) on every start: keep torch out
    from sae_sweep.config import RunConfig
    from sae_sweep.train import StopFn

__all__ = ["TRIAL_FILE", "RunDirTaken", "record_failure", "start_job", "to_run_config", "trial_cell",
           "trial_reporter"]


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The composed config as a RunConfig, every check passed (ranges, unknown keys, device, memory).

    Takes a job's config or a sweeper's composition of a cell (whose ``hydra`` node is dropped first);
    raises ConfigError with one line."""
    from omegaconf import OmegaConf, open_dict

    from sae_sweep.checks import check_run

    if "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    run_cfg = OmegaConf.to_object(cfg)
    return check_run(run_cfg, OmegaConf.to_container(cfg, resolve=True))


class RunDirTaken(RuntimeError):
    """The job's run dir holds another cell's completed record, which a job never replaces."""


def trial_cell(trial: dict[str, Any]) -> str:
    """Which trial a run stands for: the trial's own identity, or for a retry that of the trial it re-runs."""
    return str(trial.get("cell") or f"{trial.get('study_name')}:{trial.get('number')}")


def start_job(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> StopFn | None:
    """Record the run's cell; return the trial's pruning hook when this run is a prunable trial."""
    trial = read_json(run_dir / TRIAL_FILE)
    key = cell_key(cfg, trial_cell(trial) if trial else None)
    previous = read_json(run_dir / CELL_FILE)
    summary = read_json(run_dir / SUMMARY_FILE)
    if previous and previous.get("cell_key") != key and summary and summary.get("status") == "completed":
        raise RunDirTaken(f"run dir {run_dir} holds the completed run of another cell ({previous.get('cell_key')}), "
                          f"which is kept; this cell ({key}) is not run: give the sweep another name, or use the "
                          f"sae_grid sweeper, which gives a cell whose dir is taken a dir of its own")
    # A stale record from an earlier attempt of this cell must not pass for this attempt's result.
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    write_cell(run_dir, key, overrides, trial=trial.get("number") if trial else None)
    kill_point("job_started")
    if trial and trial.get("metric") and trial.get("pruner") not in (None, "none"):
        return trial_reporter(trial)
    return None


def trial_reporter(info: dict[str, Any]) -> StopFn:
    import optuna

    from sae_sweep.sweep.storage import make_pruner, open_storage

    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]),
                              pruner=make_pruner(info["pruner"], info.get("pruner_kwargs")))
    trial = optuna.Trial(study, info["trial_id"])
    metric = info["metric"]

    def should_stop(member: int, samples: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        trial.report(float(value), samples)
        return trial.should_prune()

    return should_stop


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """A job that raised before run() wrote its record still leaves a failed summary.json."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        path.write_text(json.dumps({"status": "failed", "message": f"{type(exc).__name__}: {exc}"}, indent=2))
