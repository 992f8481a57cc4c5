"""Refinement through the real CLI, end to end on a tiny toy sweep (one shared grid of 6 runs of 60 K
samples; each test refines its own copy).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sae_sweep.analysis.refinement import (
    propose_dict_sizes,
    refined_cells,
)
from sae_sweep.kill import KILL_ENV
from sae_sweep.record import REFINEMENT_FILE as RECORD_FILE
from tests.helpers.sweep import cli_env, ok, table

GRID = ["experiment=quickstart", "train.num_samples=60000", "train.eval_every=30000", "dict_size=16,32,64",
        "alpha=0.3", "seed=0,1", "logger.wandb.mode=disabled", "train.threads=1", "train.progress=false",
        "data.eval_size=1024", "hydra.callbacks.report.refine_rounds=0"]


# --- the real CLI --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny grid, swept once; tests refine copies of it."""
    sweep_dir = tmp_path_factory.mktemp("refine") / "coarse"
    ok(subprocess.run([sys.executable, "-m", "sae_sweep", "-m", *GRID, f"hydra.sweep.dir={sweep_dir}"],
                      cwd=sweep_dir.parent, env=cli_env(), capture_output=True, text=True, timeout=300))
    return sweep_dir


def _copy(coarse: Path, dest: Path) -> Path:
    shutil.copytree(coarse, dest)  # copy2: the summaries keep their mtimes
    return dest


def _refine(sweep_dir: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env() | ({KILL_ENV: kill_at} if kill_at else {})
    return subprocess.run([sys.executable, "-m", "sae_sweep.refine", str(sweep_dir), *args], cwd=sweep_dir.parent,
                          env=env, capture_output=True, text=True, timeout=300)


def _mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}


def _expected_new_j(sweep_dir: Path) -> list[int]:
    (group,) = json.loads((sweep_dir / "estimates.json").read_text())["groups"]
    new = propose_dict_sizes([16, 32, 64], [e["value"] for e in group["estimates"]])
    assert new, group["estimates"]  # the tiny grid must give the rule something to refine
    return new


def test_cli__refine_adds_the_new_j_at_the_grid_alpha_and_a_rerun_adds_nothing(coarse, tmp_path):
    sweep = _copy(coarse, tmp_path / "qs")
    new_j, before = _expected_new_j(sweep), _mtimes(sweep)
    blob = json.loads((sweep / "estimates.json").read_text())
    blob["settings"]["basin_tolerance"] = 0.05  # as if re-analysed with another threshold
    (sweep / "estimates.json").write_text(json.dumps(blob))
    proc = ok(_refine(sweep))
    df = table(sweep)
    # The recipe's hydra.sweeper.params (J up to 128, alpha 0.1 and 1) lose to the refine's command line.
    assert sorted(df["dict_size"].unique()) == sorted({16, 32, 64, *new_j}) and set(df["alpha"]) == {0.3}
    assert len(df) == 2 * (3 + len(new_j)) and df["cell_key"].is_unique and (df["status"] == "completed").all()
    after = _mtimes(sweep)
    assert {k: after[k] for k in before} == before  # the coarse cells were not run again
    record = json.loads((sweep / RECORD_FILE).read_text())
    (rnd,) = record["rounds"]
    assert rnd["status"] == "finished" and rnd["datasets"][0]["added_dict_sizes"] == new_j
    # Hydra keeps hydra.* overrides apart from the task's (the refine passes its own refine_rounds=0).
    assert record["task_overrides"] == [g for g in GRID if not g.startswith("hydra.")]
    assert "dict_size=" + ",".join(map(str, new_j)) in proc.stdout
    cells = refined_cells(sweep)
    assert sorted(cells["dict_size"]) == new_j and set(cells["round"]) == {1} and set(cells["dataset"]) == {"all"}
    # Refinement's own analysis rewrote the estimates over the refined grid, with the same thresholds.
    blob = json.loads((sweep / "estimates.json").read_text())
    assert blob["groups"][0]["cells"] == len(df) and blob["settings"]["basin_tolerance"] == 0.05

    again = ok(_refine(sweep))
    assert "asks for no more" in again.stdout
    assert len(table(sweep)) == len(df) and _mtimes(sweep) == after
    assert len(json.loads((sweep / RECORD_FILE).read_text())["rounds"]) == 1


def test_cli__a_killed_refine_rerun_completes_its_round_once(coarse, tmp_path):
    sweep = _copy(coarse, tmp_path / "qs")
    new_j = _expected_new_j(sweep)
    killed = _refine(sweep, kill_at="refine_after_record")
    assert killed.returncode == 9, killed.stderr[-2000:]
    (rnd,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd["status"] == "started" and len(rnd["commands"]) == 1 and len(list(sweep.glob("*/cell.json"))) == 6

    killed = _refine(sweep, kill_at="refine_after_command")  # the round's cells ran; the record did not hear of it
    assert killed.returncode == 9, killed.stderr[-2000:]
    (rnd2,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd2["status"] == "started" and rnd2["commands"] == rnd["commands"]
    ran = _mtimes(sweep)
    assert len(ran) == 6 + 2 * len(new_j)

    proc = ok(_refine(sweep))
    assert "started but not finished" in proc.stdout
    assert "resume: " in proc.stdout + proc.stderr
    (rnd3,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd3["status"] == "finished" and rnd3["commands"] == rnd["commands"]
    df = table(sweep)
    assert len(df) == 6 + 2 * len(new_j) and df["cell_key"].is_unique
    assert _mtimes(sweep) == ran  # each cell ran exactly once


def test_multirun__refine_rounds_refines_an_untrusted_sweep_by_itself(tmp_path):
    """hydra.callbacks.report.refine_rounds (the quickstart sets 2): the sweep's own end refines it."""
    sweep_dir = tmp_path / "auto"
    grid = [g for g in GRID if not g.startswith(("hydra.callbacks.report.refine_rounds", "dict_size"))]
    proc = ok(subprocess.run([sys.executable, "-m", "sae_sweep", "-m", *grid, "dict_size=16,32,64,128",
                              "hydra.callbacks.report.refine_rounds=1",
                              # seconds-long runs neither converge nor reproduce: the mechanism is under test here
                              "hydra.callbacks.report.min_converged_share=0", "hydra.callbacks.report.min_reproduced_share=0", "hydra.callbacks.report.min_reproduced_at_h=0",
                              f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=cli_env(), capture_output=True,
                             text=True, timeout=300))
    record = json.loads((sweep_dir / RECORD_FILE).read_text())
    assert [r["status"] for r in record["rounds"]] == ["finished"]  # one round, and its multiruns did not refine again
    assert all("hydra.callbacks.report.refine_rounds=0" in c for c in record["rounds"][0]["commands"])
    added = record["rounds"][0]["datasets"][0]["added_dict_sizes"]
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    assert set(added) <= set(runs["dict_size"]) and len(runs) == runs["cell_key"].nunique()
    assert "refining the grid" in proc.stderr + proc.stdout
    report = (sweep_dir / "report.md").read_text()
    assert "Cells added by refinement" in report and "python -m sae_sweep -m experiment=quickstart" in report
