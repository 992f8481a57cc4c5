"""Grids with the sae_grid sweeper (Hydra's basic sweeper + resume): the real CLI in a subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.sweep import kill_group, ok, run_sweep, start_sweep, table
from tests.helpers.wandb_offline import read_wandb_offline_run


def test_grid__one_run_dir_per_cell_one_wandb_run_each_and_a_results_table(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    ok(run_sweep(sweep, "alpha=0.1,0.3", "seed=0,1", "logger.wandb.mode=offline"))

    df = table(sweep)
    assert len(df) == 4 and set(df["status"]) == {"completed"}
    assert sorted(zip(df["alpha"], df["seed"], strict=True)) == [(0.1, 0), (0.1, 1), (0.3, 0), (0.3, 1)]
    for col in ("run", "cell_key", "dict_size", "mmcs", "fvu", "l0", "wall_time_s", "train_time_s",
                "started_at", "finished_at", "train.num_samples"):
        assert col in df.columns, col
    assert df["cell_key"].is_unique
    for run in df["run"]:
        run_dir = sweep / run
        assert (run_dir / "summary.json").exists() and (run_dir / "metrics.jsonl").exists()
        wb = read_wandb_offline_run(run_dir)
        assert wb["group"] == "smoke"  # grouped by sweep
        assert "alpha=" in wb["name"] and "seed=" in wb["name"]  # named by its overrides
        assert wb["exit_code"] == 0
        assert wb["id"] == df.loc[df["run"] == run, "wandb_run_id"].item()


def test_grid__results_table_has_what_users_filter_by_and_one_dataset(tmp_path: Path) -> None:
    from sae_sweep.analysis.sweep_data import group_columns, load_cells

    sweep = tmp_path / "grid"
    ok(run_sweep(sweep, "alpha=0.1,0.3", "logger.wandb.mode=offline"))
    df = table(sweep)
    for col in ("wandb_run_id", "trainer_alpha", "train.lr", "train.batch_size", "data.h", "sae.l1_norm",
                "device", "threads", "objective", "train_loss", "sweep", "run_dir"):
        assert col in df.columns and df[col].notna().all(), col
    assert set(df["sweep"]) == {"smoke"} and set(df["objective"]) == {"mmcs"} and set(df["device"]) == {"cpu"}
    assert all(Path(p).is_absolute() and (Path(p) / "summary.json").is_file() for p in df["run_dir"])
    assert list(df["train.lr"]) == [0.001, 0.001] and list(df["train.batch_size"]) == [128, 128]
    assert "train.threads" not in df.columns and "logger.wandb.mode" not in df.columns
    ints = [c for c in df.columns if pd.api.types.is_integer_dtype(df[c])]
    assert {"trial", "dict_size", "seed", "samples", "threads", "train.batch_size", "data.h"} <= set(ints)
    assert all(str(df[c].dtype) == "Int64" for c in ints), {c: str(df[c].dtype) for c in ints}
    # Config values that no command line swept do not split the analysis into datasets.
    assert group_columns(load_cells(sweep)) == []


def test_grid_resume__skips_cells_finished_under_any_spelling_and_reruns_only_failed_ones(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    first = ok(run_sweep(sweep, "train.lr=0.001,1e30"))  # lr=1e30 diverges in its job
    assert "1 of 2 runs failed" in first.stderr + first.stdout
    df = table(sweep)
    assert sorted(df["status"]) == ["completed", "diverged"]
    assert "loss became" in df.loc[df["status"] == "diverged", "message"].item()
    done = sweep / df.loc[df["status"] == "completed", "run"].item() / "summary.json"
    mtime = done.stat().st_mtime_ns

    # The same cells, alpha=0.1 spelled differently (another directory name) and a field that only
    # changes logging: a cell is recognised by its resolved config, not by its directory.
    again = ok(run_sweep(sweep, "train.lr=0.0010,1e30", "train.progress=true"))
    assert "resume: 1 of 2 cells already finished" in again.stderr + again.stdout
    assert done.stat().st_mtime_ns == mtime  # the finished cell did not run again
    df = table(sweep)
    assert len(df) == 2 and sorted(df["status"]) == ["completed", "diverged"]


def test_grid_resume__a_grid_killed_mid_run_finishes_on_rerun_with_every_cell_once(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    args = ("alpha=0.1,0.2,0.3", "train.num_samples=20000")
    proc = start_sweep(sweep, *args, log=tmp_path / "first.log")
    deadline = time.time() + 180
    # Kill once one cell finished and the next one started.
    while time.time() < deadline:
        cells = list(sweep.glob("*/cell.json"))
        if len(list(sweep.glob("*/summary.json"))) >= 1 and len(cells) >= 2:
            break
        time.sleep(0.05)
    kill_group(proc)
    assert not (sweep / "runs.parquet").exists()
    finished = [p.parent for p in sweep.glob("*/summary.json")]
    assert 1 <= len(finished) < 3

    again = ok(run_sweep(sweep, *args))
    assert f"resume: {len(finished)} of 3 cells already finished" in again.stderr + again.stdout
    df = table(sweep)
    assert len(df) == 3 and df["cell_key"].is_unique and set(df["status"]) == {"completed"}
    assert sorted(df["alpha"]) == [0.1, 0.2, 0.3]


def test_grid__stops_with_a_one_line_error_when_failures_exceed_the_rate_and_keeps_the_table(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    proc = run_sweep(sweep, "train.lr=1e30,0.001,0.002", "hydra.sweeper.max_batch_size=1",
                     "hydra.sweeper.max_failure_rate=0")
    assert proc.returncode == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sae_sweep: error: 1 of 1 runs failed") and "max_failure_rate" in last
    df = table(sweep)
    assert list(df["status"]) == ["diverged"]


@pytest.mark.parametrize("bad", ["hydra.sweeper.max_failure_rate=2", "hydra.sweeper.nope=1"])
def test_grid__bad_sweeper_setting_is_a_one_line_error(tmp_path: Path, bad: str) -> None:
    proc = run_sweep(tmp_path / "grid", "alpha=0.1", bad)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sae_sweep: error:"), proc.stderr[-2000:]


def test_grid__joblib_workers_run_cells_in_parallel_and_hydras_basic_sweeper_still_gets_the_table(
        tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    ok(run_sweep(sweep, "hydra/sweeper=basic", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "alpha=0.1,0.2"))
    df = table(sweep)  # written by the results-table callback
    assert len(df) == 2 and set(df["status"]) == {"completed"}
    pids = {json.loads((sweep / run / "cell.json").read_text())["pid"] for run in df["run"]}
    assert len(pids) == 2  # two worker processes


def test_grid__a_swept_config_field_still_splits_the_analysis_into_one_dataset_per_value(tmp_path: Path) -> None:
    from sae_sweep.analysis.sweep_data import group_columns, load_cells, split_groups

    sweep = tmp_path / "grid"
    ok(run_sweep(sweep, "alpha=0.1", "data.h=24,32"))
    cells = load_cells(sweep)
    assert group_columns(cells) == ["data.h"]
    assert [label for label, _ in split_groups(cells)] == [{"data.h": 24}, {"data.h": 32}]
