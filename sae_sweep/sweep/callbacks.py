"""Hydra callbacks: write the results table at the end of every multirun."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ResultsTable(Callback):
    """runs.parquet + runs.csv in the sweep dir, one row per cell, rebuilt from the run dirs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sae_sweep.sweep.table import write_results_table  # pandas: not for single runs

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            df = write_results_table(sweep_dir)
            log.info(f"results table: {sweep_dir / 'runs.parquet'} ({len(df)} runs)")
