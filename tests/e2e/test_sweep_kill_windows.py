"""hydra/sweeper=sae_optuna killed at exact lines (SAE_SWEEP_KILL_AT, sae_sweep/kill.py), then re-run.

Each test runs the real CLI in a subprocess on a real SQLite study, lets it die at a named point
as ``kill -9`` would (no cleanup), re-runs the same command and reads the study and the table back:
nothing is lost, nothing is trained twice, no trial is left running.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from sae_sweep.sweep.storage import open_storage, storage_spec
from tests.helpers.sweep import killed_at, ok, run_sweep, table

OPTUNA = ("hydra/sweeper=sae_optuna",)


pytestmark = pytest.mark.slow  # minutes of real CLI runs: pytest -n 2 -m slow


def trials_of(sweep_dir: Path, spec: str | None = None) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(storage_spec(spec, sweep_dir))
    return optuna.load_study(study_name="smoke", storage=storage).get_trials()


def states(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return [t.state.name for t in trials]


def test_kill_after_ask__the_rerun_reclaims_the_new_trial_and_ends_with_n_trials_complete(tmp_path: Path) -> None:
    sweep = tmp_path / "asked"
    args = (*OPTUNA, "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0", "hydra.sweeper.n_trials=2",
            "alpha=interval(0.05,0.5)")
    killed_at("asked:2", sweep, *args)  # trial 1 was just created in the study, nothing else happened
    assert states(trials_of(sweep)) == ["COMPLETE", "RUNNING"]

    ok(run_sweep(sweep, *args))
    trials = trials_of(sweep)
    assert states(trials) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["orphaned"] and trials[2].user_attrs["retry_of"] == 1
    df = table(sweep)
    assert sorted(df["trial"]) == [0, 2] and set(df["status"]) == {"completed"}


def test_kill_in_the_last_trial__its_retry_runs_also_after_a_kill_before_the_retry_exists(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "alpha=choice(0.1,0.3)")
    killed_at("job_started:2", sweep, *args)  # the grid's last point dies while training
    killed_at("requeued", sweep, *args)  # the re-run dies right after failing it, before a retry exists
    assert states(trials_of(sweep)) == ["COMPLETE", "FAIL"]

    ok(run_sweep(sweep, *args))
    trials = trials_of(sweep)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sorted(t.params["alpha"] for t in trials if t.state == TrialState.COMPLETE) == [0.1, 0.3]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 1]  # trial 1's point, run by its retry
    assert retry.state == TrialState.COMPLETE and retry.params == trials[1].params
    df = table(sweep)  # the killed attempt and its retry are one cell: one row, the completed one
    assert sorted(df["alpha"]) == [0.1, 0.3] and set(df["status"]) == {"completed"}


def test_kill_in_the_last_trial__a_waiting_retry_is_not_counted_and_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "random"
    args = (*OPTUNA, "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0", "hydra.sweeper.n_trials=2",
            "alpha=interval(0.05,0.5)")
    killed_at("job_started:2", sweep, *args)
    # A trial queued by hand (as an earlier sweeper left its retries) is run, not counted as existing.
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep)))
    study.enqueue_trial({"alpha": 0.2})

    ok(run_sweep(sweep, *args, "hydra.sweeper.n_trials=3"))
    trials = trials_of(sweep)
    assert states(trials) == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["orphaned"] and trials[2].user_attrs["queued"]
    assert {t.user_attrs["retry_of"] for t in trials[3:]} == {1, 2}
    assert 0.2 in [t.params["alpha"] for t in trials[3:]]
    assert sorted(table(sweep)["trial"]) == [0, 3, 4]


def test_kill_between_summary_and_tell__the_rerun_tells_the_finished_result_without_retraining(
        tmp_path: Path) -> None:
    sweep = tmp_path / "tell"
    args = (*OPTUNA, "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0", "hydra.sweeper.n_trials=2",
            "alpha=interval(0.05,0.5)")
    killed_at("before_tell:2", sweep, *args)
    summary_path = sweep / "trial_00001" / "summary.json"
    summary, mtime = json.loads(summary_path.read_text()), summary_path.stat().st_mtime_ns
    assert summary["status"] == "completed" and states(trials_of(sweep)) == ["COMPLETE", "RUNNING"]

    proc = ok(run_sweep(sweep, *args))
    assert "Launching" not in proc.stdout + proc.stderr  # nothing trained again
    assert summary_path.stat().st_mtime_ns == mtime
    trials = trials_of(sweep)
    assert states(trials) == ["COMPLETE", "COMPLETE"]
    assert trials[1].value == pytest.approx(summary["mmcs"]) and trials[1].user_attrs["recovered"]
    df = table(sweep)
    assert list(df["trial"]) == [0, 1] and list(df["mmcs"]) == pytest.approx([t.value for t in trials])


def test_trials_that_repeat_parameters__each_keep_their_own_row(tmp_path: Path) -> None:
    sweep = tmp_path / "repeat"
    ok(run_sweep(sweep, *OPTUNA, "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
                 "hydra.sweeper.n_trials=3", "alpha=choice(0.1,0.3)"))  # three draws of two values: a repeat
    trials = trials_of(sweep)
    assert states(trials) == ["COMPLETE"] * 3 and len({t.params["alpha"] for t in trials}) < 3
    df = table(sweep)
    assert list(df["trial"]) == [0, 1, 2] and df["cell_key"].nunique() == 3
    assert list(df["alpha"]) == [t.params["alpha"] for t in trials]


@pytest.mark.parametrize("age_s, reclaimed", [(10_000.0, True), (5.0, False)])
def test_kill_on_another_host__a_stale_heartbeat_is_reclaimed_and_a_fresh_one_left_alone(
        tmp_path: Path, age_s: float, reclaimed: bool) -> None:
    import time

    sweep = tmp_path / "hosts"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "alpha=choice(0.1)")
    killed_at("job_started", sweep, *args)  # the only trial dies while training
    (running,) = trials_of(sweep)
    assert running.state == TrialState.RUNNING and running.user_attrs["heartbeat"] > 0  # stamped on launch
    # As if its sweeper had run on another machine (no pid to check here), last seen age_s ago.
    storage = open_storage(storage_spec(None, sweep))
    storage.set_trial_user_attr(running._trial_id, "worker", "elsewhere.example:4242:1")
    storage.set_trial_user_attr(running._trial_id, "heartbeat", time.time() - age_s)

    ok(run_sweep(sweep, *args, "hydra.sweeper.stale_after_s=600"))
    trials = trials_of(sweep)
    if reclaimed:
        assert states(trials) == ["FAIL", "COMPLETE"] and trials[0].user_attrs["orphaned"]
        assert trials[1].user_attrs["retry_of"] == 0 and set(table(sweep)["status"]) == {"completed"}
    else:  # a live sweeper elsewhere still owns it: the grid point is taken, nothing runs
        assert states(trials) == ["RUNNING"]


def _weights_and_rows(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The run's weights and latent statistics as bit patterns, and its metrics rows without timings."""
    tensors = {f"{f}:{k}": v.view(torch.int32) for f in ("sae.safetensors", "latents.safetensors")
               for k, v in load_file(str(run_dir / f)).items()}
    rows = [{k: v for k, v in json.loads(line).items() if not k.endswith(("_s", "_per_s"))}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return tensors, rows


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_kill_after_a_checkpoint__the_retry_continues_from_it_in_the_dead_trials_dir_and_ends_bit_identical(
        tmp_path: Path, storage: str) -> None:
    sweep = tmp_path / "checkpoint"
    spec = f"journal:{tmp_path / 'study.log'}" if storage == "journal" else None
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "alpha=choice(0.1)",
            "train.checkpoint_every=1280", "train.save_weights=true",
            *([f"hydra.sweeper.storage={spec}"] if spec else []))
    killed_at("checkpoint_written:2", sweep, *args)  # the only trial dies after its second checkpoint (step 20)
    assert (sweep / "trial_00000" / "checkpoint.safetensors").is_file()

    proc = ok(run_sweep(sweep, *args))
    trials = trials_of(sweep, spec)
    assert states(trials) == ["FAIL", "COMPLETE"] and trials[0].user_attrs["orphaned"]
    assert trials[1].user_attrs["retry_of"] == 0
    # The retry took the dead attempt's dir over (renamed to its own) and went on from sample 20 * 128.
    assert not (sweep / "trial_00000").exists() and trials[1].user_attrs["run_dir"] == str(sweep / "trial_00001")
    logs = proc.stdout + proc.stderr + "".join(p.read_text() for p in (sweep / "trial_00001").glob("*.log"))
    assert "re-runs trial 0 in trial_00001, from the checkpoint" in logs
    assert "resuming from the checkpoint at sample 2560" in logs
    assert not list(sweep.glob("*/checkpoint*.safetensors")) and not list(sweep.glob("*/.checkpoint*"))
    assert list(table(sweep)["status"]) == ["completed"]

    whole = tmp_path / "whole"
    ok(run_sweep(whole, *OPTUNA, *args[1:5], "train.save_weights=true"))
    (a, rows_a), (b, rows_b) = _weights_and_rows(sweep / "trial_00001"), _weights_and_rows(whole / "trial_00000")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows_a == rows_b  # every evaluation once, equal to the uninterrupted run's
    assert trials[1].value == trials_of(whole)[0].value


def test_kill_while_a_retry_adopts_the_dead_trials_dir__the_next_retry_takes_it_over(tmp_path: Path) -> None:
    sweep = tmp_path / "adopt"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "alpha=choice(0.1)",
            "train.checkpoint_every=1280")
    killed_at("checkpoint_written", sweep, *args)
    killed_at("adopting", sweep, *args)  # trial 1's trial.json written into trial_00000, not yet renamed
    assert json.loads((sweep / "trial_00000" / "trial.json").read_text())["number"] == 1

    proc = ok(run_sweep(sweep, *args))
    assert states(trials_of(sweep)) == ["FAIL", "FAIL", "COMPLETE"]
    assert [p.name for p in sweep.glob("trial_*")] == ["trial_00002"]
    assert "resuming from the checkpoint at sample 1280" in proc.stdout + proc.stderr + "".join(
        p.read_text() for p in (sweep / "trial_00002").glob("*.log"))
    assert not list(sweep.glob("*/checkpoint*")) and list(table(sweep)["status"]) == ["completed"]


def test_kill_between_summary_and_checkpoint_removal__the_rerun_tells_the_trial_and_removes_them(
        tmp_path: Path) -> None:
    sweep = tmp_path / "summary"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "alpha=choice(0.1)",
            "train.checkpoint_every=1280")
    killed_at("summary_written", sweep, *args)
    summary = (sweep / "trial_00000" / "summary.json").read_text()
    assert (sweep / "trial_00000" / "checkpoint.safetensors").is_file()  # the window

    proc = ok(run_sweep(sweep, *args))
    assert "Launching" not in proc.stdout + proc.stderr  # nothing trained again
    assert states(trials_of(sweep)) == ["COMPLETE"] and trials_of(sweep)[0].user_attrs["recovered"]
    assert (sweep / "trial_00000" / "summary.json").read_text() == summary
    assert not list(sweep.glob("*/checkpoint*"))


@pytest.mark.parametrize("set_up", [False, True])
def test_kill_in_a_batch__the_trial_whose_job_never_started_leaves_no_run_dir(tmp_path: Path, set_up: bool) -> None:
    sweep = tmp_path / "batch"
    args = (*OPTUNA, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null", "hydra.sweeper.n_jobs=2",
            "alpha=choice(0.1,0.3)")
    killed_at("job_started", sweep, *args)  # the batch's first job dies, the second never starts
    assert [p.name for p in (sweep / "trial_00001").iterdir()] == ["trial.json"]
    if set_up:  # as a kill leaves it after Hydra set the job up (.hydra/, its log), before it recorded its cell
        (sweep / "trial_00001" / ".hydra").mkdir()
        (sweep / "trial_00001" / ".hydra" / "overrides.yaml").write_text("- alpha=0.3\n")
        (sweep / "trial_00001" / "__main__.log").write_text("")

    ok(run_sweep(sweep, *args))
    assert states(trials_of(sweep)) == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    # Its retry ran in trial_00003: nothing would ever run in trial_00001 or remove it.
    assert not (sweep / "trial_00001").exists()
    assert all((d / "cell.json").is_file() for d in sweep.glob("trial_*"))
    assert sorted(table(sweep)["alpha"]) == [0.1, 0.3]
