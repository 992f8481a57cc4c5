"""The job side of a sweep: what a multirun job does before and after training.

``__main__._task`` runs a multirun job as :func:`multirun_job`, ``run`` and :func:`job_objective`; the
packed launcher (sweep/packed.py) calls the same two halves around its packed training. The job
records which cell the run is (cell.json) and, when the run is an Optuna trial, reports each evaluation
to that trial through the shared storage so the study's pruner can stop it. The sweeper leaves
``trial.json`` in the run dir before launching; reaching the trial through storage rather than through
the sweeper's memory is what makes pruning work in joblib workers or on SLURM nodes too.

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

from sae_sweep.kill import kill_point
from sae_sweep.record import CELL_FILE, COMPLETED, FAILED, SUMMARY_FILE, TRIAL_FILE, read_json
from sae_sweep.sweep.cells import cell_key, write_cell

if TYPE_CHECKING:  # Hydra imports the sweepers (and so this module) on every start: keep torch out
    from sae_sweep.config import RunConfig
    from sae_sweep.run import Job
    from sae_sweep.train import StopFn

__all__ = ["TRIAL_FILE", "RunDirTaken", "job_objective", "multirun_job", "record_failure", "start_job",
           "to_run_config", "trial_cell", "trial_reporter"]


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
    if previous and previous.get("cell_key") != key and summary and summary.get("status") == COMPLETED:
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
        path.write_text(json.dumps({"status": FAILED, "message": f"{type(exc).__name__}: {exc}"}, indent=2))


def multirun_job(cfg: DictConfig) -> Job:
    """The job side of a multirun up to training: record the cell, reach the trial, convert the config.

    Called inside Hydra's ``run_job`` (HydraConfig is set). A bad config still leaves a failed
    summary.json in the run dir before the error propagates, so the sweeper records the job.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from sae_sweep.run import Job
    from sae_sweep.sweep.progress import ProgressSink
    from sae_sweep.threads import choose_threads, launcher_workers

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        # Record the cell (for grid resume) and reach the Optuna trial, if any, for pruning.
        should_stop = start_job(cfg, run_dir, list(hc.overrides.task))
        run_cfg = to_run_config(cfg)
    except Exception as exc:
        record_failure(run_dir, exc)
        raise
    workers = launcher_workers({k: OmegaConf.select(hc, f"launcher.{k}", default=None) for k in ("_target_", "n_jobs")})
    if run_cfg.train.threads == 0 and workers > 1:  # concurrent local workers share the cores
        run_cfg.train.threads = choose_threads(0, workers=workers) or 0
    trial = read_json(run_dir / TRIAL_FILE)
    sweep_dir = Path(hc.sweep.dir)
    return Job(run_cfg, run_dir, run_name=hc.job.override_dirname or run_cfg.name, group=run_cfg.name,
               should_stop=should_stop, trial=trial.get("number") if trial else None,
               extra_sinks=lambda: [ProgressSink(sweep_dir)])  # the sweep's progress line as each run ends


def job_objective(summary: dict[str, Any], run_dir: Path) -> float | None:
    """What a finished job returns to its sweeper; raises RunFailed if it did not complete.

    The objective: recovery of the true features (mmcs) when they are known, else the reconstruction
    error (fvu)."""
    from sae_sweep.run import RunFailed

    if summary["status"] != COMPLETED:
        raise RunFailed(f"run {summary['status']}: {summary['message']} (record: {run_dir / SUMMARY_FILE})")
    return summary["mmcs"] if summary.get("mmcs") is not None else summary.get("fvu")
