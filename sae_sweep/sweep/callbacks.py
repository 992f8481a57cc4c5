"""Hydra callbacks: the results table and the feature-count report at the end of every multirun."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sae_sweep.record import RESULTS_FILE

log = logging.getLogger(__name__)


class ResultsTable(Callback):
    """runs.parquet + runs.csv in the sweep dir, one row per cell, rebuilt from the run dirs (once per
    multirun: sae_sweep's sweepers write it as they end, and this callback then writes it for others)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sae_sweep.table import write_results_table, written_since  # pandas: not for single runs

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            df = written_since(sweep_dir, getattr(self, "started", float("inf")))
            if df is None:
                df = write_results_table(sweep_dir)
            log.info(f"results table: {sweep_dir / RESULTS_FILE} ({len(df)} runs)")


class SweepReport(Callback):
    """Estimates of h, figures and report.md in the sweep dir (sae_sweep.analysis), after the table.

    Runs when the sweep has completed cells at two or more dictionary sizes; an analysis error is
    logged in one line and never touches the runs or the table.
    """

    def __init__(self, enabled: bool = True, wandb_mode: str = "offline", project: str = "sae_sweep",
                 refine_rounds: int = 0, **settings: float) -> None:
        self.enabled, self.wandb_mode, self.project, self.settings = enabled, wandb_mode, project, settings
        self.refine_rounds = int(refine_rounds)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not self.enabled or not sweep_dir.is_dir():
            return
        from sae_sweep.analysis.pipeline import run_analysis
        from sae_sweep.analysis.settings import AnalysisSettings
        from sae_sweep.analysis.sweep_data import load_cells
        from sae_sweep.table import written_since

        cells = load_cells(sweep_dir, written_since(sweep_dir, getattr(self, "started", float("inf"))))
        if cells.empty or cells["dict_size"].nunique() < 2:
            log.info("report: skipped (needs completed runs at two or more dictionary sizes)")
            return
        try:
            reports = run_analysis(sweep_dir, AnalysisSettings(**self.settings), wandb_mode=self.wandb_mode,
                                   project=self.project, group=str(config.name), cells=cells)
        except Exception as exc:  # the analysis must never cost the sweep its results
            log.warning(f"report: analysis failed ({type(exc).__name__}: {exc}); re-run it with "
                        f"python -m sae_sweep.analyze {sweep_dir}")
            return
        if self.refine_rounds > 0 and any(r.verdict is not None and r.verdict.wants_refinement for r in reports):
            self._refine(config, sweep_dir)

    def _refine(self, config: DictConfig, sweep_dir: Path) -> None:
        """``python -m sae_sweep.refine`` on this sweep (report.refine_rounds rounds). Its multiruns get
        refine_rounds=0, so they never refine again, and this process's launcher."""
        from omegaconf import OmegaConf

        from sae_sweep.sweep.refine import RefineError, refine

        launcher = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher")
        extra = ["hydra.callbacks.report.refine_rounds=0"]
        if launcher and launcher != "basic":
            extra.append(f"hydra/launcher={launcher}")
        log.info(f"report: not trusted yet; refining the grid ({self.refine_rounds} rounds at most)")
        try:
            refine(sweep_dir, rounds=self.refine_rounds, extra_args=extra)
        except (RefineError, OSError) as exc:
            log.warning(f"report: refinement stopped ({exc}); resume it with python -m sae_sweep.refine {sweep_dir} "
                        f"--rounds {self.refine_rounds}")
