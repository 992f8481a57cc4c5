"""``hydra/sweeper=sae_optuna``: a small Optuna sweeper on current Optuna, by ask/tell.

Each trial is one Hydra job in ``<sweep dir>/trial_NNNNN``. The study lives in shared storage
(SQLite in the sweep dir by default), so:
- re-running the same command continues the study; ``n_trials`` is the study's total, not per call;
- several sweeper processes (a journal file, or PostgreSQL across machines) share one study;
- the job reaches its own trial through the storage (run dir's trial.json) and reports every
  evaluation, so the study's pruner can stop it in whatever process or machine it runs;
- a run that raises, diverges or returns a non-finite objective is told FAIL and the sweep goes on
  until failures exceed ``max_failure_rate``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from sae_sweep.sweep.job import TRIAL_FILE
from sae_sweep.sweep.outcome import FailureBudget, SweepAborted, job_run_dir, job_summary
from sae_sweep.sweep.space import as_override, grid_of, parse_space
from sae_sweep.sweep.storage import (
    AskTellGridSampler,
    SweepConfigError,
    derived_seed,
    make_pruner,
    make_sampler,
    open_storage,
    storage_spec,
)

log = logging.getLogger(__name__)
DIRECTIONS = ("maximize", "minimize")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.sae_sweep_plugins.SaeOptunaSweeper"
    sampler: str = "tpe"
    """tpe, random, grid (every param a choice or range; runs each missing point once) or nsgaii."""
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the Optuna sampler (e.g. n_startup_trials for tpe, population_size for nsgaii)."""
    seed: int | None = None
    """Sampler seed; combined with the study's trial count so a resumed study does not repeat itself."""
    objectives: list[str] = field(default_factory=list)
    """Metrics of summary.json to optimise. Empty: mmcs on toy data (ground truth known), else fvu and l0."""
    directions: list[str] = field(default_factory=list)
    """maximize|minimize per objective. Empty: maximize mmcs; minimize anything else."""
    n_trials: int | None = 20
    """Total trials in the study (across calls and workers); None with sampler=grid = the whole grid."""
    n_jobs: int = 1
    """Trials asked and launched together (set to the launcher's parallelism, e.g. joblib n_jobs)."""
    storage: str | None = None
    """None = sqlite file optuna.db in the sweep dir; journal:<path> or *.log = journal file; or an RDB URL."""
    study_name: str | None = None
    """None = the sweep's name."""
    pruner: str = "none"
    """none, median, successive_halving or hyperband; runs report their objective at every evaluation."""
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the Optuna pruner (n_startup_trials, n_warmup_steps, min_resource, ...)."""
    max_failure_rate: float = 0.5
    """Stop asking new trials once this share of this call's runs failed (checked after 4 runs)."""
    params: dict[str, str] | None = None
    """The search space in Hydra's override grammar (see sae_sweep/sweep/space.py)."""


def default_objectives(config: DictConfig) -> dict[str, str]:
    has_truth = OmegaConf.select(config, "data.kind", default=None) == "toy"
    return {"mmcs": "maximize"} if has_truth else {"fvu": "minimize", "l0": "minimize"}


def open_study(name: str, storage: optuna.storages.BaseStorage, directions: list[str]) -> optuna.Study:
    """Create the study or load it; a concurrent first creation by another worker is tolerated."""
    # Our own log line says which study and how many trials; Optuna's would precede a one-line error.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                        load_if_exists=True)
            break
        except Exception as exc:  # the loser of a creation race sees a duplicate or integrity error
            if attempt == 4:
                raise
            log.info(f"study {name!r} creation raced ({type(exc).__name__}); loading it")
            time.sleep(0.5 * (attempt + 1))
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise SweepConfigError(f"hydra.sweeper.objectives: study {name!r} optimises {have}, the config asks for "
                               f"{directions}; use another study_name")
    return study


WORKER = f"{os.uname().nodename}:{os.getpid()}"  # the sweeper process that owns a running trial


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward n_trials: all but those failed as orphans (they are re-queued)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("orphaned")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_orphans(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose sweeper (on this host) is gone, e.g. killed, and re-queue their params.

    Without this a killed sweeper's trial would stay RUNNING for ever and count toward n_trials, and the
    grid sampler would never run its point again. Trials of sweepers on other hosts are left alone.
    """
    host = os.uname().nodename
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        whost, _, pid = worker.rpartition(":")
        if whost != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "orphaned", True)
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    return n


class SaeOptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.conf = OptunaSweeperConf(**conf)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _objectives(self) -> dict[str, str]:
        """Metric -> direction, in order."""
        assert self.config is not None
        metrics = list(self.conf.objectives) or list(default_objectives(self.config))
        directions = list(self.conf.directions) or [
            "maximize" if m.startswith(("mmcs", "recovered")) else "minimize" for m in metrics]
        if len(directions) != len(metrics) or any(d not in DIRECTIONS for d in directions):
            raise SweepConfigError(f"hydra.sweeper.directions must give maximize or minimize for each of "
                                   f"{metrics}, got {directions}")
        return dict(zip(metrics, directions, strict=True))

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        c = self.conf
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        objectives = self._objectives()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (c.params or {}).items()]
        space, fixed = parse_space([*params, *arguments], parser)
        grid = grid_of(space) if c.sampler == "grid" else None
        make_sampler(c.sampler, c.seed, grid, c.sampler_kwargs)  # reject a bad sampler before any trial
        make_pruner(c.pruner, c.pruner_kwargs)
        n_total = c.n_trials if c.n_trials is not None else (math.prod(len(v) for v in grid.values())
                                                           if grid is not None else None)
        if n_total is None or n_total < 0 or c.n_jobs < 1:
            raise SweepConfigError(f"hydra.sweeper.n_trials must be an integer >= 0 (null only with sampler=grid) "
                                   f"and n_jobs >= 1, got n_trials={c.n_trials!r}, n_jobs={c.n_jobs!r}")
        spec = storage_spec(c.storage, sweep_dir)
        name = c.study_name or str(self.config.name)
        study = open_study(name, open_storage(spec), list(objectives.values()))
        budget = FailureBudget(c.max_failure_rate)
        retried = retry_orphans(study)
        log.info(f"study {name!r} in {spec}: {len(counted(study))} of {n_total} trials exist"
                 + (f"; re-queued {retried} trials whose sweeper died" if retried else ""))
        try:
            while not budget.exceeded:
                n_existing = len(counted(study))
                if n_existing >= n_total:
                    break
                study.sampler = make_sampler(c.sampler, derived_seed(c.seed, n_existing), grid, c.sampler_kwargs)
                if isinstance(study.sampler, AskTellGridSampler) and study.sampler.all_finished(study):
                    break
                trials = [self._ask(study, space, name) for _ in range(min(c.n_jobs, n_total - n_existing))]
                batch = [self._prepare(t, fixed, sweep_dir, spec, name, objectives) for t in trials]
                results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
                for trial, ret in zip(trials, results, strict=True):
                    self._tell(study, trial, ret, objectives, budget)
        finally:
            from sae_sweep.sweep.table import write_results_table  # pandas: only once a sweep ends

            write_results_table(sweep_dir)
        if budget.exceeded:
            raise SweepAborted(budget.message())
        self._log_best(study, objectives)
        return None

    @staticmethod
    def _ask(study: optuna.Study, space: dict[str, Any], name: str) -> optuna.Trial:
        try:
            return study.ask(space)
        except ValueError as exc:  # e.g. a categorical whose choices changed since the study began
            raise SweepConfigError(f"search space does not fit study {name!r}: {exc}; keep the space or use "
                                   f"another hydra.sweeper.study_name") from exc

    def _prepare(self, trial: optuna.Trial, fixed: list[str], sweep_dir: Path, spec: str, name: str,
                 objectives: dict[str, str]) -> list[str]:
        """The trial's overrides; its run dir gets trial.json so the job can reach the trial."""
        subdir = f"trial_{trial.number:05d}"
        run_dir = sweep_dir / subdir
        run_dir.mkdir(parents=True, exist_ok=True)
        single = len(objectives) == 1  # Optuna prunes single-objective studies only
        info = {"storage": spec, "study_name": name, "trial_id": trial._trial_id, "number": trial.number,
                "metric": next(iter(objectives)) if single else None,
                "pruner": self.conf.pruner if single else "none", "pruner_kwargs": dict(self.conf.pruner_kwargs)}
        (run_dir / TRIAL_FILE).write_text(json.dumps(info, indent=2))
        trial.set_user_attr("worker", WORKER)
        return [*fixed, *(as_override(k, v) for k, v in trial.params.items()), f"hydra.sweep.subdir={subdir}"]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any, objectives: dict[str, str],
              budget: FailureBudget) -> None:
        summary = job_summary(ret)
        status = str(summary.get("status"))
        run_dir = job_run_dir(ret)
        trial.set_user_attr("run_dir", str(run_dir) if run_dir else None)
        trial.set_user_attr("status", status)
        values = [summary.get(m) for m in objectives]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        if status == "completed" and finite:
            state = TrialState.COMPLETE
            study.tell(trial, [float(v) for v in values])  # type: ignore[arg-type]
        elif status == "pruned":
            state = TrialState.PRUNED
            study.tell(trial, state=state)
        else:
            state = TrialState.FAIL
            message = str(summary.get("message") or f"objective {dict(zip(objectives, values, strict=True))} is not finite")
            trial.set_user_attr("message", message[:500])
            study.tell(trial, state=state)
        budget.add(state == TrialState.FAIL, f"trial {trial.number}", str(summary.get("message", "")))
        log.info(f"trial {trial.number}: {state.name} {dict(zip(objectives, values, strict=True))} {trial.params}")

    @staticmethod
    def _log_best(study: optuna.Study, objectives: dict[str, str]) -> None:
        try:
            best = study.best_trials
        except ValueError:
            return
        for t in best[:5]:
            log.info(f"best trial {t.number}: {dict(zip(objectives, t.values, strict=True))} {t.params}")
