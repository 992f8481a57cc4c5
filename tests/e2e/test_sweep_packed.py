"""``hydra/launcher=packed`` through the real CLI: grids and Optuna batches trained as packs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.sweep import ok, run_sweep, table
from tests.helpers.wandb_offline import read_wandb_offline_run

PACKED = "hydra/launcher=packed"


def _by_cell(df):
    return {(float(r.alpha), int(r.dict_size)): r for r in df.itertuples()}


def test_packed__a_grid_trains_as_one_pack_and_matches_the_same_grid_run_job_by_job(tmp_path: Path) -> None:
    grid = ("alpha=0.1,0.3,1", "dict_size=16,32")
    proc = ok(run_sweep(tmp_path / "packed", PACKED, *grid))
    assert "pack 1/1: 6 jobs, dict sizes [16, 32]" in proc.stderr + proc.stdout
    # each job is composed once: the launcher takes the configs the sweeper composed to check the cells
    assert "6 of 6 job configs composed once" in proc.stderr + proc.stdout
    ok(run_sweep(tmp_path / "basic", *grid))
    packed, basic = _by_cell(table(tmp_path / "packed")), _by_cell(table(tmp_path / "basic"))
    assert sorted(packed) == sorted(basic) and len(packed) == 6
    for cell, row in packed.items():
        assert row.status == "completed", row.message
        assert (tmp_path / "packed" / row.run / "summary.json").exists()
        for name in ("config.yaml", "overrides.yaml"):  # the job's own config, as the basic launcher composes it
            record = (tmp_path / "packed" / row.run / ".hydra" / name).read_text()
            assert record == (tmp_path / "basic" / basic[cell].run / ".hydra" / name).read_text()
        for metric in ("loss", "mse", "mmcs", "l0"):
            assert getattr(row, metric) == pytest.approx(getattr(basic[cell], metric), rel=1e-4), (cell, metric)
    # Re-running the finished grid launches nothing.
    again = ok(run_sweep(tmp_path / "packed", PACKED, *grid))
    assert "6 of 6 cells already finished" in again.stderr + again.stdout


def test_packed__a_diverging_member_fails_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    # init_scale 1e30 makes that member's loss overflow at the first step. (A grid holding a bad cell,
    # e.g. alpha=-1, is refused before any cell runs: tests/e2e/test_bad_inputs.py.)
    ok(run_sweep(sweep, PACKED, "alpha=0.3,0.1", "sae.init_scale=1,1e30"))
    df = table(sweep)
    status = {(float(r["alpha"]), float(r["sae.init_scale"])): r["status"] for _, r in df.iterrows()}
    assert status[(0.3, 1.0)] == status[(0.1, 1.0)] == "completed"
    assert status[(0.3, 1e30)] == status[(0.1, 1e30)] == "diverged"


def test_packed__optuna_batches_train_packed_and_every_trial_gets_its_result(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from sae_sweep.sweep.storage import open_storage, storage_spec

    sweep = tmp_path / "study"
    proc = ok(run_sweep(sweep, "hydra/sweeper=sae_optuna", PACKED, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3",
                        "hydra.sweeper.sampler=random", "hydra.sweeper.seed=1",
                        "alpha=tag(log,interval(0.05,1))", "dict_size=choice(16,32)"))
    assert (proc.stdout + proc.stderr).count("Launching 3 jobs packed") == 2
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep)))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["mmcs"] == pytest.approx(t.values[0])
        assert summary["alpha"] == pytest.approx(t.params["alpha"]) and summary["dict_size"] == t.params["dict_size"]


def test_packed__optuna_pruner_stops_members_of_a_pack(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from sae_sweep.sweep.storage import open_storage, storage_spec

    sweep = tmp_path / "study"
    common = ("hydra/sweeper=sae_optuna", "train.num_samples=10000", "hydra.sweeper.pruner=median",
              "+hydra.sweeper.pruner_kwargs.n_startup_trials=1", "+hydra.sweeper.pruner_kwargs.n_warmup_steps=0")
    ok(run_sweep(sweep, *common, "hydra.sweeper.n_trials=1", "train.lr=tag(log,interval(0.009,0.011))"))
    # Both later trials learn nothing (lr ~1e-8) and share one pack: the pruner stops each at its first report.
    ok(run_sweep(sweep, *common, PACKED, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                 "train.lr=1e-8", "alpha=tag(log,interval(0.1,1))"))
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep)))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]


def test_packed__every_job_keeps_its_own_wandb_run(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    ok(run_sweep(sweep, PACKED, "alpha=0.1,1", "logger.wandb.mode=offline"))
    df = table(sweep)
    for r in df.itertuples():
        wb = read_wandb_offline_run(sweep / r.run)
        assert wb["name"] == r.run and wb["exit_code"] == 0
        assert wb["config"]["alpha"] == pytest.approx(r.alpha)
        assert wb["history"][-1]["loss"] == pytest.approx(r.loss, rel=1e-5)


def test_packed__seeds_and_sizes_share_one_stacked_pack_with_the_records_of_job_by_job(tmp_path: Path) -> None:
    grid = ("alpha=0.1,1", "dict_size=16,48", "seed=0,1")  # two batch streams, two J padded into one group
    proc = ok(run_sweep(tmp_path / "packed", PACKED, *grid))
    assert "pack 1/1: 8 jobs, dict sizes [16, 48]" in proc.stderr + proc.stdout
    ok(run_sweep(tmp_path / "basic", *grid))
    cells = lambda df: {(float(r.alpha), int(r.dict_size), int(r.seed)): r for r in df.itertuples()}  # noqa: E731
    packed, basic = cells(table(tmp_path / "packed")), cells(table(tmp_path / "basic"))
    assert sorted(packed) == sorted(basic) and len(packed) == 8
    for cell, row in packed.items():
        assert row.status == "completed", row.message
        for metric in ("loss", "mse", "l1", "mmcs", "fvu", "l0", "dead", "alive"):
            assert getattr(row, metric) == pytest.approx(getattr(basic[cell], metric), rel=1e-4, abs=1e-6), (cell, metric)
        summary = json.loads((tmp_path / "packed" / row.run / "summary.json").read_text())
        assert summary["dead"] + summary["alive"] == cell[1]
