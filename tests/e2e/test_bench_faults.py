"""benchmarks/bench_faults.py end to end: two random kills per kind, then every count is zero.

Minutes of real CLI runs (a grid, a packed grid and an Optuna study, each killed and re-run), so slow:
pytest -n 2 -m slow. That its audit sees each fault it counts: tests/unit/test_bench_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_faults import COUNTS, KINDS
from tests.helpers.sweep import REPO, cli_env

pytestmark = pytest.mark.slow


def test_bench_faults__two_kills_per_kind_lose_duplicate_retrain_and_strand_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_faults.py"), "--kills", "2",
                           "--samples", "80000", "--seed", "0", "--out", str(tmp_path)],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "faults.json").read_text())
    assert [r["kind"] for r in results] == list(KINDS)
    for r in results:
        assert r["kills"] == 2 and set(r["final_rcs"]) == {0} and r["clean_rc"] == 0, r
        assert r["counts"] == dict.fromkeys(COUNTS, 0), r["findings"]
        assert r["clean_counts"] == dict.fromkeys(COUNTS, 0), r["clean_findings"]
