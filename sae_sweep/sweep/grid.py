"""The grid sweeper: Hydra's basic sweeper that resumes and survives failed cells.

Differences from ``BasicSweeper``: cells whose resolved config already completed in the sweep dir
are skipped (so re-running an interrupted grid runs only the missing or failed cells, and rewrites the
W&B run a kill left unfinished in a skipped one: cells.repair_mirrors); a failed cell
is logged and the grid goes on, until failures exceed ``max_failure_rate``; the results table is
written even when the sweep stops early; a cell whose named run dir holds another cell's record
(the name leaves out ``experiment`` and ``data.path``) runs in a dir of its own (cells.own_subdir).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf

from sae_sweep.record import MULTIRUN_FILE, PRUNED
from sae_sweep.sweep.cells import cell_key, finished_cells, own_subdir, repair_mirrors, subdir_override
from sae_sweep.sweep.job import to_run_config
from sae_sweep.sweep.outcome import FailureBudget, SweepAborted, job_summary
from sae_sweep.sweep.progress import start_progress

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.sae_sweep_plugins.SaeGridSweeper"
    max_batch_size: int | None = None
    """Cells launched together (a joblib launcher runs a batch in parallel); None = all at once."""
    params: dict[str, str] | None = None
    """Sweep axes in config, as on the command line: {alpha: '0.1,0.3'}."""
    resume: bool = True
    """Skip cells whose resolved config already completed in the sweep dir."""
    max_failure_rate: float = 1.0
    """Stop launching new batches once this share of runs failed (1.0 = never stop)."""


class SaeGridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 resume: bool = True, max_failure_rate: float = 1.0) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.resume = resume
        self.budget = FailureBudget(max_failure_rate)

    def _cells(self, arguments: list[str]) -> list[list[str]]:
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        return [job for batch in self.split_arguments(overrides, None) for job in batch]

    def _todo(self, cells: list[list[str]], sweep_dir: Path, done: dict[str, Path]) -> list[list[str]]:
        """Cells still to run (``done``: the finished ones). Every cell is composed and checked here
        (sweep.job.to_run_config), so a bad cell stops the sweep with one line before any run starts or
        anything is written."""
        assert self.hydra_context is not None and self.config is not None
        todo, seen = [], set()
        composed = []
        for overrides in cells:
            cfg = self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides))
            to_run_config(cfg)
            composed.append((overrides, cfg))
        reusable: dict[tuple[str, ...], DictConfig] = {}
        for overrides, cfg in composed:
            key = cell_key(cfg)
            if key in done or key in seen:
                continue
            seen.add(key)
            todo.append(self._own_dir(overrides, cfg, sweep_dir, key))
            if todo[-1] == list(overrides):  # a cell sent to a dir of its own is composed again
                reusable[tuple(overrides)] = cfg
        if hasattr(self.launcher, "reuse"):  # the packed launcher: compose each job once, not twice
            self.launcher.reuse(reusable)
        skipped = len(cells) - len(todo)
        if skipped:
            log.info(f"resume: {skipped} of {len(cells)} cells already finished in {sweep_dir}, "
                     f"running {len(todo)}")
        return todo

    @staticmethod
    def _own_dir(overrides: list[str], cfg: DictConfig, sweep_dir: Path, key: str) -> list[str]:
        """The cell's overrides, sending it to a dir of its own when its named dir holds another cell."""
        subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        own = own_subdir(sweep_dir, subdir, key)
        if own == subdir:
            return list(overrides)
        log.info(f"run dir {subdir} holds another cell's record: this cell runs in {own}")
        return [*overrides, subdir_override(own)]

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        done = finished_cells(sweep_dir) if self.resume and sweep_dir.is_dir() else {}
        todo = self._todo(self._cells(arguments), sweep_dir, done)
        repair_mirrors(done.values())  # a finished cell killed before its W&B run finished is not run again
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        start_progress(sweep_dir, len(todo))
        self.overrides = list(self.split_overrides_to_chunks(todo, self.max_batch_size)) if todo else []
        returns = []
        job_idx = 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=job_idx)
                job_idx += len(batch)
                for ret, overrides in zip(results, batch, strict=True):
                    summary = job_summary(ret)
                    failed = ret.status == JobStatus.FAILED and summary.get("status") != PRUNED
                    self.budget.add(failed, " ".join(overrides), str(summary.get("message", "")))
                returns.append(results)
                if self.budget.exceeded:
                    raise SweepAborted(self.budget.message())
        finally:
            from sae_sweep.table import write_results_table  # pandas: only once a sweep ends

            write_results_table(sweep_dir)
        if self.budget.failures:
            log.warning(f"{self.budget.failures} of {self.budget.runs} runs failed; re-run the same "
                        f"command to retry them")
        return returns
