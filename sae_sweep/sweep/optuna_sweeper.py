"""``hydra/sweeper=sae_optuna``: a small Optuna sweeper on current Optuna, by ask/tell.

Each trial is one Hydra job in ``<sweep dir>/trial_NNNNN``. The study lives in shared storage
(SQLite in the sweep dir by default), so:
- re-running the same command continues the study; ``n_trials`` is the study's total, not per call;
- several sweeper processes (a journal file, or PostgreSQL across machines) share one study;
- the job reaches its own trial through the storage (run dir's trial.json) and reports every
  evaluation, so the study's pruner can stop it in whatever process or machine it runs;
- a run that raises, diverges or returns a non-finite objective is told FAIL and the sweep goes on
  until failures exceed ``max_failure_rate``; a FAIL trial is never run again, so the checkpoints its
  recorded run left go (unless ``train.keep_checkpoint``; a run killed before its record keeps them).

A kill anywhere (``kill -9``, a lost node) loses, strands and retrains nothing; the same command
re-run picks up. Every trial is created RUNNING together with its owner (host, pid and the pid's
start time) in one storage call, never by ``Study.ask``, which leaves a moment with an ownerless
running trial. Before every batch the sweeper settles the trials no live sweeper will finish
(``_reclaim``): a RUNNING trial whose sweeper on this host is gone is told from its run dir when
its summary.json holds a finished result, else failed as ``orphaned`` and re-run by a new trial
with its parameters (its grid point) and ``retry_of``, which continues from the dead attempt's last
checkpoint in that attempt's run dir, renamed to its own (liveness.adopt); WAITING queue entries are taken over the
same way (the owners, their liveness and the reclaim: sweep/liveness.py). Superseded trials and queue entries do not count toward ``n_trials``. Two sweepers that
re-run one trial at once both create a retry, and the one with the lower number runs it. Trials
of a live sweeper, or of one on another host (whose liveness is unknown here), are left alone.
Each trial is its own cell (cell.json's key hashes the trial it stands for), so every trial has
its row in runs.parquet, and a retry shares the row of the trial it re-runs. ``trial_NNNNN`` is
never reused by another trial (a second study in the dir, or a study made anew): that one runs in
``trial_NNNNN~<8 digits of its uid>``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from sae_sweep.config import SUMMARY_METRICS
from sae_sweep.kill import kill_point
from sae_sweep.record import (
    CELL_FILE,
    COMPLETED,
    FAILED,
    MULTIRUN_FILE,
    PRUNED,
    SUMMARY_FILE,
    TRIAL_FILE,
    read_json,
    write_json_atomic,
)
from sae_sweep.sweep.cells import discard_unkept_checkpoints, subdir_override
from sae_sweep.sweep.job import to_run_config
from sae_sweep.sweep.liveness import (  # noqa: F401  (HOST, _process_start, worker_alive: the old import path)
    FINAL,
    HOST,
    WORKER,
    Heartbeat,
    _process_start,
    adopt,
    counted,
    pending_retries,
    reclaim,
    supersede,
    trial_subdir,
    worker_alive,
)
from sae_sweep.sweep.outcome import FailureBudget, SweepAborted, job_run_dir, job_summary
from sae_sweep.sweep.progress import start_progress
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
# What a retry inherits from the trial it re-runs, so the grid sampler gives it the same point.
REPLAYED_SYSTEM_ATTRS = ("grid_id", "search_space", "fixed_params")


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
    heartbeat_s: float = 60.0
    """While its trials run, the sweeper stamps each with the time (user attr ``heartbeat``) this often."""
    stale_after_s: float = 900.0
    """A running trial of a sweeper on another host whose stamp is older than this is reclaimed (its
    sweeper is taken for dead; on this host the process itself is checked). Keep it well above
    heartbeat_s plus the clock skew between hosts."""


def default_objectives(config: DictConfig) -> dict[str, str]:
    has_truth = OmegaConf.select(config, "data.kind", default=None) == "toy"
    return {"mmcs": "maximize"} if has_truth else {"fvu": "minimize", "l0": "minimize"}


def open_study(name: str, storage: optuna.storages.BaseStorage, directions: list[str],
               metric_names: list[str] | None = None) -> optuna.Study:
    """Create the study or load it; a concurrent first creation by another worker is tolerated.

    With ``metric_names`` the study names its objectives (Optuna's dashboard and CLI show them)."""
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
    if metric_names and study.metric_names != list(metric_names):
        with warnings.catch_warnings():  # experimental in Optuna 5: the warning says nothing to a user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    return study


def _ends(d: BaseDistribution) -> list[Any]:
    """The values a search-space check composes: every choice, or both bounds of a range."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    return [d.low, d.high]  # Int- and FloatDistribution


def own_summary(ret: JobReturn, number: int) -> dict[str, Any]:
    """The trial's summary.json, or a failed stand-in when the run dir holds no record of this trial
    (the job died before recording it, or found another cell's record there and left it alone)."""
    summary = job_summary(ret)
    run_dir = job_run_dir(ret)
    cell = read_json(run_dir / CELL_FILE) if run_dir is not None else None
    if cell is not None and cell.get("trial") == number:
        return summary
    if summary.get("status") == COMPLETED or ret.status == JobStatus.FAILED:
        return {"status": FAILED, "message": repr(ret._return_value) if ret.status == JobStatus.FAILED
                else f"no record of trial {number} in {run_dir}"}
    return summary


def recorded_here(run_dir: Path, number: int) -> bool:
    """Whether ``run_dir`` holds trial ``number``'s own finished record: its cell.json is the trial's and its
    summary.json ended (completed, pruned, diverged or failed; not interrupted, nor missing as after a kill)."""
    cell, summary = read_json(run_dir / CELL_FILE), read_json(run_dir / SUMMARY_FILE)
    return bool(cell and cell.get("trial") == number and summary and summary.get("status") in FINAL)


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
        unknown = [m for m in metrics if m not in SUMMARY_METRICS]
        if unknown:
            raise SweepConfigError(f"hydra.sweeper.objectives must name metrics of summary.json "
                                   f"({', '.join(SUMMARY_METRICS)}), got {metrics}")
        truthless = [m for m in metrics if m.startswith(("mmcs", "recovered"))
                     and OmegaConf.select(self.config, "data.kind", default=None) != "toy"]
        if truthless:
            raise SweepConfigError(f"hydra.sweeper.objectives must not use {truthless} without ground truth "
                                   f"(data.kind=toy): real activations give fvu, l0, loss, mse, dead and alive")
        if len(directions) != len(metrics) or any(d not in DIRECTIONS for d in directions):
            raise SweepConfigError(f"hydra.sweeper.directions must give maximize or minimize for each of "
                                   f"{metrics}, got {directions}")
        return dict(zip(metrics, directions, strict=True))

    def _check_space(self, space: dict[str, BaseDistribution], fixed: list[str]) -> None:
        """Compose and check (sweep.job.to_run_config) a trial at each end of every axis, the other axes
        at their low end, so a bad fixed override or an out-of-range bound stops the sweep in one line
        before any trial exists."""
        assert self.hydra_context is not None and self.config is not None
        low = {k: _ends(d)[0] for k, d in space.items()}
        for key, d in space.items():
            for value in _ends(d):
                trial = [*fixed, *(as_override(k, value if k == key else v) for k, v in low.items())]
                to_run_config(self.hydra_context.config_loader.load_sweep_config(
                    master_config=self.config, sweep_overrides=trial))

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        c = self.conf
        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        objectives = self._objectives()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (c.params or {}).items()]
        space, fixed = parse_space([*params, *arguments], parser)
        grid = grid_of(space) if c.sampler == "grid" else None
        make_sampler(c.sampler, c.seed, grid, c.sampler_kwargs)  # reject a bad sampler before any trial
        make_pruner(c.pruner, c.pruner_kwargs)
        self._check_space(space, fixed)
        if not (c.heartbeat_s > 0 and c.stale_after_s > c.heartbeat_s):
            raise SweepConfigError(f"hydra.sweeper.heartbeat_s must be > 0 and stale_after_s greater than it, got "
                                   f"heartbeat_s={c.heartbeat_s}, stale_after_s={c.stale_after_s}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        n_total = c.n_trials if c.n_trials is not None else (math.prod(len(v) for v in grid.values())
                                                           if grid is not None else None)
        if n_total is None or n_total < 0 or c.n_jobs < 1:
            raise SweepConfigError(f"hydra.sweeper.n_trials must be an integer >= 0 (null only with sampler=grid) "
                                   f"and n_jobs >= 1, got n_trials={c.n_trials!r}, n_jobs={c.n_jobs!r}")
        spec = storage_spec(c.storage, sweep_dir)
        name = c.study_name or str(self.config.name)
        study = open_study(name, open_storage(spec), list(objectives.values()), list(objectives))
        budget = FailureBudget(c.max_failure_rate)
        trials, reclaimed = self._reclaim(study, sweep_dir, objectives)
        log.info(f"study {name!r} in {spec}: {len(counted(trials))} of {n_total} trials exist"
                 + "".join(f"; {what}: {n}" for what, n in reclaimed.items()))
        start_progress(sweep_dir, max(n_total - len(counted(trials)), 0))
        try:
            while not budget.exceeded:
                n_existing = len(counted(trials))
                if n_existing >= n_total:
                    break
                study.sampler = make_sampler(c.sampler, derived_seed(c.seed, n_existing), grid, c.sampler_kwargs)
                if isinstance(study.sampler, AskTellGridSampler) and study.sampler.all_finished(counted(trials)):
                    break
                pending = pending_retries(trials)
                claimed = [self._claim(study, space, name, sweep_dir, pending.pop(0) if pending else None)
                           for _ in range(min(c.n_jobs, n_total - n_existing))]
                batch = [t for t in claimed if t is not None]  # None: another sweeper took that retry first
                if batch:
                    overrides = [self._prepare(t, fixed, sweep_dir, spec, name, objectives) for t in batch]
                    with Heartbeat(study, [t._trial_id for t in batch], c.heartbeat_s):
                        results = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
                    kill_point("before_tell")
                    for trial, ret in zip(batch, results, strict=True):
                        summary = own_summary(ret, trial.number)
                        state = self._tell(study, trial._trial_id, trial.number, summary, job_run_dir(ret),
                                           objectives, trial.params)
                        budget.add(state == TrialState.FAIL, f"trial {trial.number}", str(summary.get("message", "")))
                trials, _ = self._reclaim(study, sweep_dir, objectives)
        finally:
            from sae_sweep.table import write_results_table  # pandas: only once a sweep ends

            write_results_table(sweep_dir)
        if budget.exceeded:
            raise SweepAborted(budget.message())
        self._log_best(study, objectives)
        return None

    def _claim(self, study: optuna.Study, space: dict[str, Any], name: str, sweep_dir: Path,
               retry: FrozenTrial | None) -> optuna.Trial | None:
        """A new RUNNING trial, created together with its owner in one storage call (Study.ask creates it
        first and leaves the owner to a second call); ``retry``: the superseded trial it re-runs.

        None when the retry lost to another sweeper's retry of the same trial (the lowest number wins).
        """
        uid = uuid.uuid4().hex
        attrs: dict[str, Any] = {"worker": WORKER, "sweep_dir": str(sweep_dir), "uid": uid, "cell": uid}
        params: dict[str, Any] = {}
        distributions: dict[str, Any] = {}
        system: dict[str, Any] = {}
        if retry is not None:
            cell = retry.user_attrs.get("cell") or retry.user_attrs.get("uid")
            attrs.update(retry_of=retry.number, cell=cell or f"{name}:{retry.number}")
            params, distributions = dict(retry.params), dict(retry.distributions)
            system = {k: retry.system_attrs[k] for k in REPLAYED_SYSTEM_ATTRS if k in retry.system_attrs}
        template = optuna.trial.create_trial(state=TrialState.RUNNING, params=params, distributions=distributions,
                                             user_attrs=attrs, system_attrs=system)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
        kill_point("asked")
        if retry is not None and not self._won(study, trial_id, retry.number):
            return None
        # As Study.ask does: samplers read the study's latest trials, then the space is suggested.
        study._thread_local.cached_all_trials = None
        trial = optuna.Trial(study, trial_id)
        try:
            for key, distribution in space.items():
                trial._suggest(key, distribution)
        except ValueError as exc:  # e.g. a categorical whose choices changed since the study began
            supersede(study, study._storage.get_trial(trial_id), "rejected")
            raise SweepConfigError(f"search space does not fit study {name!r}: {exc}; keep the space or use "
                                   f"another hydra.sweeper.study_name") from exc
        return trial

    @staticmethod
    def _won(study: optuna.Study, trial_id: int, retry_of: int) -> bool:
        """Whether the new trial ``trial_id`` is the first retry of trial ``retry_of``; fail it if not."""
        number = study._storage.get_trial_number_from_id(trial_id)
        rivals = [t.number for t in study._storage.get_all_trials(study._study_id, deepcopy=False)
                  if t.user_attrs.get("retry_of") == retry_of]
        if min(rivals, default=number) >= number:
            return True
        supersede(study, study._storage.get_trial(trial_id), "duplicate")
        return False

    def _prepare(self, trial: optuna.Trial, fixed: list[str], sweep_dir: Path, spec: str, name: str,
                 objectives: dict[str, str]) -> list[str]:
        """The trial's overrides; its run dir gets trial.json so the job can reach the trial."""
        attrs = trial.user_attrs
        subdir = trial_subdir(sweep_dir, trial.number, attrs["uid"])
        run_dir = sweep_dir / subdir
        single = len(objectives) == 1  # Optuna prunes single-objective studies only
        info = {"storage": spec, "study_name": name, "trial_id": trial._trial_id, "number": trial.number,
                "uid": attrs["uid"], "cell": attrs["cell"],
                "metric": next(iter(objectives)) if single else None, "objectives": list(objectives),
                "pruner": self.conf.pruner if single else "none", "pruner_kwargs": dict(self.conf.pruner_kwargs)}
        if attrs.get("retry_of") is not None:
            taken = adopt(sweep_dir, run_dir, info)
            if taken is not None:
                log.info(f"trial {trial.number} re-runs trial {attrs['retry_of']} in {subdir}, from the checkpoint "
                         f"its dead attempt left in {taken.name}")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / TRIAL_FILE, info)  # a half-written trial.json would hide the trial's result
        return [*fixed, *(as_override(k, v) for k, v in trial.params.items()), subdir_override(subdir)]

    def _reclaim(self, study: optuna.Study, sweep_dir: Path,
                 objectives: dict[str, str]) -> tuple[list[FrozenTrial], dict[str, int]]:
        """liveness.reclaim, telling a dead sweeper's finished trial as this sweeper tells its own."""

        def tell(study: optuna.Study, trial: FrozenTrial, summary: dict[str, Any], run_dir: Path) -> None:
            self._tell(study, trial._trial_id, trial.number, summary, run_dir, objectives, trial.params)

        return reclaim(study, sweep_dir, self.conf.stale_after_s, tell)

    @staticmethod
    def _tell(study: optuna.Study, trial_id: int, number: int, summary: dict[str, Any], run_dir: Path | None,
              objectives: dict[str, str], params: dict[str, Any]) -> TrialState:
        """Tell the study a trial's outcome from its summary; returns the state told."""
        status = str(summary.get("status"))
        storage = study._storage
        storage.set_trial_user_attr(trial_id, "run_dir", str(run_dir) if run_dir else None)
        storage.set_trial_user_attr(trial_id, "status", status)
        values = [summary.get(m) for m in objectives]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        shown = dict(zip(objectives, values, strict=True))
        if status == COMPLETED and finite:
            state = TrialState.COMPLETE
            study.tell(number, [float(v) for v in values], skip_if_finished=True)  # type: ignore[arg-type]
        elif status == PRUNED:
            state = TrialState.PRUNED
            study.tell(number, state=state, skip_if_finished=True)
        else:
            state = TrialState.FAIL
            message = str(summary.get("message") or f"objective {shown} is not finite")
            storage.set_trial_user_attr(trial_id, "message", message[:500])
            study.tell(number, state=state, skip_if_finished=True)
            # Nothing resumes a FAIL trial's checkpoints (a raised run keeps them for a grid's retry: run.py).
            if run_dir is not None and recorded_here(run_dir, number) and discard_unkept_checkpoints(run_dir):
                log.info(f"trial {number}: removed the checkpoints of its failed run")
        log.info(f"trial {number}: {state.name} {shown} {params}")
        return state

    @staticmethod
    def _log_best(study: optuna.Study, objectives: dict[str, str]) -> None:
        try:
            best = study.best_trials
        except ValueError:
            return
        for t in best[:5]:
            log.info(f"best trial {t.number}: {dict(zip(objectives, t.values, strict=True))} {t.params}")
