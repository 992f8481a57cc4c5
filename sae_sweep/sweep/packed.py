"""``hydra/launcher=packed``: train a batch of sweep jobs as packs on shared batches, in one process.

A sweeper (the grid, or the Optuna sweeper with ``n_jobs=K``) hands the launcher a batch of jobs.
The launcher sets up every job as Hydra's basic launcher would (its run dir, ``.hydra/`` record,
cell.json and Optuna trial link, through the same job-side code as a solo job), then groups the
jobs that can train together (equal ``sae_sweep.run.pack_key``: same data, schedule and device;
alpha, dict_size, seed and batch stream may differ, each member reading its own stream) and trains
each group with ``run_packed`` (small SAEs as stacked batched computations: ``sae_sweep/packing.py``). Every job keeps its own run dir, W&B run, trial, status and
row in the results table; a diverged or pruned member ends alone, and a job whose config is bad
fails before any training without touching the others.

Why: per-job runs each pay process start, imports, W&B start-up and, on toy data, the batch
generator; a pack pays them once (what that saves: benchmarks/bench_packed.py, benchmarks/README.md).
Threads are set explicitly
(``threads``): a pack is one process, so one torch thread per core and no oversubscription.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from sae_sweep.threads import set_torch_threads, usable_cores

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.sae_sweep_plugins.PackedLauncher"
    max_members: int = 64
    """Most jobs trained as one pack (memory grows with the sum of the members' J); larger groups are split."""
    threads: int = 0
    """Torch threads of the pack's process; 0 = one per CPU this process may use. A job's train.threads wins."""


class PackedLauncher(Launcher):
    def __init__(self, max_members: int = 64, threads: int = 0) -> None:
        if max_members < 1 or threads < 0:
            from sae_sweep.sweep.storage import SweepConfigError

            raise SweepConfigError(f"hydra.launcher: max_members must be >= 1 and threads >= 0, got "
                                   f"max_members={max_members}, threads={threads}")
        self.max_members, self.threads = max_members, threads
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def reuse(self, composed: dict[tuple[str, ...], DictConfig]) -> None:
        """Job configs the sweeper has composed already (to check every cell before any runs), by their
        overrides: each is used once instead of composing it again, Hydra's most expensive step per job
        (a third of a small-SAE sweep's fixed cost). Same master config, same overrides: the same config."""
        self.composed.update(composed)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # The task function is sae_sweep's own entrypoint; the launcher calls its two halves
        # (sweep.job: multirun_job, job_objective) around the packed training instead.
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sae_sweep.run import Job, pack_key
        from sae_sweep.sweep.job import multirun_job

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        threads = self.threads or usable_cores()
        set_torch_threads(threads)
        log.info(f"Launching {len(job_overrides)} jobs packed ({threads} torch threads)")

        # 1. Set up every job as the basic launcher would; the task returns the job, not a result.
        rets: list[JobReturn] = []
        jobs: dict[int, Job] = {}
        reused = 0
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.composed.pop(tuple(overrides), None)
            reused += sweep_config is not None
            if sweep_config is None:
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            ret = run_job(hydra_context=self.hydra_context, task_function=multirun_job, config=sweep_config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            rets.append(ret)
            if ret.status == JobStatus.COMPLETED:
                jobs[i] = ret.return_value
            else:
                log.warning(f"job #{idx} failed before training: {ret._return_value}")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        log.info(f"{reused} of {len(job_overrides)} job configs composed once (by the sweeper's check)")

        # 2. Group the jobs that can share batches and train each group as one pack.
        groups: dict[str, list[int]] = {}
        for i, job in jobs.items():
            groups.setdefault(pack_key(job.cfg), []).append(i)
        packs = [g[s : s + self.max_members] for g in groups.values() for s in range(0, len(g), self.max_members)]
        for n, pack in enumerate(packs, 1):
            sizes = sorted({jobs[i].cfg.dict_size for i in pack})
            log.info(f"pack {n}/{len(packs)}: {len(pack)} jobs, dict sizes {sizes}")
            self._train(pack, jobs, rets)
        return rets

    @staticmethod
    def _train(pack: list[int], jobs: dict, rets: list[JobReturn]) -> None:
        """Train one pack; each job's return is its objective, or its failure."""
        from sae_sweep.run import run_packed
        from sae_sweep.sweep.job import job_objective

        try:
            summaries = run_packed([jobs[i] for i in pack])
        except Exception as exc:  # the pack as a whole failed (e.g. out of memory): every member did
            log.error(f"pack of {len(pack)} jobs failed: {type(exc).__name__}: {exc}")
            for i in pack:
                rets[i].return_value, rets[i].status = exc, JobStatus.FAILED
            return
        for i, summary in zip(pack, summaries, strict=True):
            try:
                rets[i].return_value = job_objective(summary, jobs[i].run_dir)
                rets[i].status = JobStatus.COMPLETED
            except Exception as exc:
                rets[i].return_value, rets[i].status = exc, JobStatus.FAILED
