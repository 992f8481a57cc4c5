"""The results table's build-once handover at a multirun's end (sae_sweep/table.py)."""

from __future__ import annotations

import time
from pathlib import Path

from sae_sweep.record import RESULTS_FILE
from sae_sweep.table import write_results_table, written_since


def test_written_since__hands_over_the_table_built_after_the_multirun_started_and_nothing_older(tmp_path: Path):
    sweep, other = tmp_path / "sweep", tmp_path / "other"
    sweep.mkdir(), other.mkdir()
    started = time.monotonic()
    df = write_results_table(sweep)
    assert (sweep / RESULTS_FILE).exists()
    assert written_since(sweep, started) is df
    assert written_since(sweep / ".." / "sweep", started) is df  # the same dir, however it is spelled
    assert written_since(sweep, time.monotonic()) is None  # built before this multirun began: read again
    assert written_since(other, started) is None
