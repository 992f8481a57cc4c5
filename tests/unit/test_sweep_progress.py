"""The sweep's progress line (sweep/progress.py): cells done / total, failures and an ETA."""

from __future__ import annotations

import re

from sae_sweep.sweep.progress import format_eta, progress_line, start_progress


def test_progress_line__counts_records_written_since_the_start_and_extrapolates(tmp_path):
    import json
    import os

    start_progress(tmp_path, 4)
    t0 = json.loads((tmp_path / "progress.json").read_text())["started_at"]
    for i, status in enumerate(("completed", "failed")):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "summary.json").write_text(json.dumps({"status": status}))
    (tmp_path / "old").mkdir()  # a record from an earlier invocation does not count
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"status": "completed"}))
    os.utime(tmp_path / "old" / "summary.json", (t0 - 60, t0 - 60))
    assert progress_line(tmp_path, now=t0 + 10) == (
        f"{tmp_path.name}: 2/4 cells done (1 failed), 0:00:10 elapsed, ETA 0:00:10")
    assert format_eta(3725) == "1:02:05"


def test_progress_line__jobs_that_finish_together_claim_consecutive_counts(tmp_path):
    import json

    start_progress(tmp_path, 3)
    for i in range(2):  # two records land before either job prints its line
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "summary.json").write_text(json.dumps({"status": "completed"}))
    counts = [re.match(r".*: (\d)/3", progress_line(tmp_path, claim=True)).group(1) for _ in range(2)]
    assert counts == ["1", "2"]
    start_progress(tmp_path, 3)  # a new invocation counts from 1 again
    assert progress_line(tmp_path, claim=True).split(": ")[1].startswith("1/3")
