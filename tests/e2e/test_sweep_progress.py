"""The sweep's progress line in a real multirun, per launcher."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.sweep import ok, run_sweep


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                                      ("hydra/launcher=packed",)], ids=["basic", "joblib", "packed"])
def test_multirun__prints_a_progress_line_per_finished_cell(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    proc = ok(run_sweep(tmp_path / "grid", *launcher, "alpha=0.1,0.2,0.3"))
    lines = re.findall(r"\[progress\] grid: (\d)/3 cells done \((\d) failed\), [\d:]+ elapsed, ETA [\d:?]+",
                       proc.stdout + proc.stderr)
    assert sorted(lines) == [("1", "0"), ("2", "0"), ("3", "0")], proc.stderr[-3000:]
