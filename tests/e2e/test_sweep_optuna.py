"""hydra/sweeper=sae_optuna: search spaces, samplers, storages, study resume, failures, pruning.

Every test runs the real CLI in a subprocess and reads the study back from its real storage.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sae_sweep.kill import RAISE_ENV
from sae_sweep.sweep.storage import open_storage, storage_spec
from tests.helpers.sweep import cli_env, ok, run_sweep, sweep_cmd, table
from tests.helpers.wandb_offline import read_wandb_offline_run

OPTUNA = ("hydra/sweeper=sae_optuna",)


def load(sweep: Path, storage: str | None = None, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage_spec(storage, sweep)))


def test_optuna__tpe_search_over_log_float_choice_and_int_fills_study_and_table(tmp_path: Path) -> None:
    sweep = tmp_path / "tpe"
    ok(run_sweep(sweep, *OPTUNA, "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=1",
                 "alpha=tag(log,interval(0.01,1))", "dict_size=choice(16,32)", "train.batch_size=int(interval(64,128))"))
    study = load(sweep)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # default: maximise MMCS on toy data
    for t in trials:
        assert 0.01 <= t.params["alpha"] <= 1 and t.params["dict_size"] in (16, 32)
        assert isinstance(t.params["train.batch_size"], int) and 64 <= t.params["train.batch_size"] <= 128
        assert isinstance(study.trials[0].distributions["alpha"], optuna.distributions.FloatDistribution)
        assert study.trials[0].distributions["alpha"].log
    df = table(sweep)
    assert list(df["trial"]) == [0, 1, 2] and list(df["run"]) == ["trial_00000", "trial_00001", "trial_00002"]
    assert list(df["mmcs"]) == pytest.approx([t.value for t in trials])
    assert list(df["train.batch_size"]) == [t.params["train.batch_size"] for t in trials]
    assert study.metric_names == ["mmcs"] and set(df["objective"]) == {"mmcs"}


def test_optuna_resume__n_trials_is_the_study_total_and_a_seeded_sampler_does_not_repeat_points(tmp_path: Path) -> None:
    sweep = tmp_path / "resume"
    args = (*OPTUNA, "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0", "alpha=interval(0.01,1)")
    ok(run_sweep(sweep, *args, "hydra.sweeper.n_trials=2"))
    again = ok(run_sweep(sweep, *args, "hydra.sweeper.n_trials=3"))
    assert (again.stdout + again.stderr).count("Launching 1 jobs") == 1  # the study total is 3: one more trial
    alphas = [t.params["alpha"] for t in load(sweep).get_trials(states=(TrialState.COMPLETE,))]
    assert len(alphas) == 3 and len(set(alphas)) == 3
    assert len(table(sweep)) == 3


def test_optuna_grid__a_resumed_study_runs_exactly_the_missing_points(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "alpha=choice(0.1,0.3)", "seed=range(0,2)")
    ok(run_sweep(sweep, *args, "hydra.sweeper.n_trials=1"))
    ok(run_sweep(sweep, *args, "hydra.sweeper.n_trials=null"))  # null: the whole grid
    points = [(t.params["alpha"], t.params["seed"]) for t in load(sweep).get_trials()]
    assert sorted(points) == [(0.1, 0), (0.1, 1), (0.3, 0), (0.3, 1)]
    assert sorted(zip(table(sweep)["alpha"], table(sweep)["seed"], strict=True)) == sorted(points)


def test_optuna__diverging_runs_are_told_fail_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # (A search space holding an invalid value, e.g. alpha=-1, is refused before any trial: test_bad_inputs.py.)
    sweep = tmp_path / "fail"
    proc = ok(run_sweep(sweep, *OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null",
                        "alpha=choice(0.1,0.2)", "train.lr=choice(0.001,1e30)",
                        "hydra.sweeper.max_failure_rate=1", "logger.wandb.mode=offline"))
    assert "run failed" in proc.stderr + proc.stdout
    by_point = {(t.params["alpha"], t.params["train.lr"]): t for t in load(sweep).get_trials()}
    assert by_point[(0.1, 0.001)].state == TrialState.COMPLETE
    assert by_point[(0.1, 1e30)].state == TrialState.FAIL  # diverged
    assert by_point[(0.1, 1e30)].user_attrs["status"] == "diverged"
    diverged_dir = Path(by_point[(0.1, 1e30)].user_attrs["run_dir"])
    assert read_wandb_offline_run(diverged_dir)["exit_code"] == 1  # its W&B run is marked failed
    assert by_point[(0.2, 0.001)].state == TrialState.COMPLETE
    assert sorted(table(sweep)["status"]) == ["completed", "completed", "diverged", "diverged"]


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_optuna__a_trial_failing_after_a_checkpoint_is_told_fail_without_its_checkpoints_and_the_study_goes_on(
        tmp_path: Path, keep: bool) -> None:
    sweep = tmp_path / "raised"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "alpha=choice(0.1,0.2)",
            "train.checkpoint_every=1280", f"train.keep_checkpoint={str(keep).lower()}")
    # The first trial raises right after its first checkpoint (sae_sweep/kill.py); the basic launcher runs
    # both trials in the sweeper's process, so the second one passes that point a second time and goes on.
    sweep.parent.mkdir(parents=True, exist_ok=True)
    ok(subprocess.run(sweep_cmd(sweep, *args), cwd=sweep.parent, env={**cli_env(), RAISE_ENV: "checkpoint_written:1"},
                      capture_output=True, text=True, timeout=240))
    first, second = load(sweep).get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["status"] == "failed"
    assert "InjectedFailure" in first.user_attrs["message"]
    failed_dir = Path(first.user_attrs["run_dir"])
    assert json.loads((failed_dir / "summary.json").read_text())["status"] == "failed"  # its record is kept
    assert (failed_dir / "checkpoint.safetensors").is_file() is keep
    assert not list(failed_dir.glob(".checkpoint*"))
    assert second.state == TrialState.COMPLETE
    assert sorted(table(sweep)["status"]) == ["completed", "failed"]

    again = ok(run_sweep(sweep, *args))  # the whole grid is told: the failure is not trained again
    assert "Launching" not in again.stdout + again.stderr
    assert [t.state for t in load(sweep).get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]


def test_optuna__stops_with_a_one_line_error_once_failures_exceed_the_rate(tmp_path: Path) -> None:
    sweep = tmp_path / "rate"
    proc = run_sweep(sweep, *OPTUNA, "hydra.sweeper.n_trials=5", "hydra.sweeper.max_failure_rate=0",
                     "alpha=choice(0.1,0.2)", "train.lr=1e30")
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("sae_sweep: error: 1 of 1 runs failed")
    assert len(load(sweep).get_trials()) == 1 and len(table(sweep)) == 1


def test_optuna__multi_objective_nsgaii_minimises_fvu_and_l0(tmp_path: Path) -> None:
    sweep = tmp_path / "moo"
    ok(run_sweep(sweep, *OPTUNA, "hydra.sweeper.sampler=nsgaii", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.seed=0", "hydra.sweeper.objectives=[fvu,l0]",
                 "alpha=tag(log,interval(0.01,1))"))
    study = load(sweep)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    df = table(sweep)
    for t, (_, row) in zip(study.get_trials(), df.iterrows(), strict=True):
        assert t.values == pytest.approx([row["fvu"], row["l0"]])


# (a journal file storage is covered by tests/e2e/test_sweep_workers.py)
def test_optuna__an_rdb_url_storage_holds_the_named_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/studies/s.db"
    ok(run_sweep(tmp_path / "st", *OPTUNA, f"hydra.sweeper.storage='{url}'", "hydra.sweeper.study_name=mine",
                 "hydra.sweeper.n_trials=1", "alpha=interval(0.1,0.3)"))
    assert [t.state for t in load(tmp_path, url, "mine").get_trials()] == [TrialState.COMPLETE]
    assert not (tmp_path / "st" / "optuna.db").exists()


@pytest.mark.parametrize("bad, says", [
    (("hydra.sweeper.sampler=grid", "alpha=interval(0.1,1)"), "needs every parameter"),
    (("hydra.sweeper.sampler=cmaes", "alpha=interval(0.1,1)"), "sampler must be one of"),
    (("hydra.sweeper.storage=nowhere", "alpha=interval(0.1,1)"), "storage must be"),
])
def test_optuna__bad_sweeper_input_is_a_one_line_error(tmp_path: Path, bad: tuple[str, ...], says: str) -> None:
    proc = run_sweep(tmp_path / "bad", *OPTUNA, *bad)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr[-2000:]


def test_optuna_resume__a_sweeper_killed_mid_trial_reruns_that_point_and_completes_the_grid(tmp_path: Path) -> None:
    import time

    from tests.helpers.sweep import kill_group, start_sweep

    sweep = tmp_path / "killed"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "train.num_samples=40000",
            "alpha=choice(0.1,0.2,0.3)")
    proc = start_sweep(sweep, *args, log=tmp_path / "first.log")
    deadline = time.time() + 180
    while time.time() < deadline and not (sweep / "trial_00001" / "cell.json").exists():
        time.sleep(0.05)
    kill_group(proc)
    assert not (sweep / "trial_00001" / "summary.json").exists()  # killed mid-trial

    ok(run_sweep(sweep, *args))
    trials = load(sweep).get_trials()
    complete = [t.params["alpha"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [0.1, 0.2, 0.3]  # every point once
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    orphan = trials[1]
    assert orphan.state == TrialState.FAIL and orphan.user_attrs["orphaned"]
    df = table(sweep)
    assert sorted(df["alpha"]) == [0.1, 0.2, 0.3] and set(df["status"]) == {"completed"}


def test_optuna__resuming_a_study_with_other_directions_is_a_one_line_error(tmp_path: Path) -> None:
    sweep = tmp_path / "dirs"
    optuna.create_study(study_name="smoke", direction="minimize", storage=open_storage(storage_spec(None, sweep)))
    proc = run_sweep(sweep, *OPTUNA, "alpha=interval(0.1,1)")  # default objective: maximise mmcs
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimises ['minimize']" in lines[0], proc.stderr[-2000:]
