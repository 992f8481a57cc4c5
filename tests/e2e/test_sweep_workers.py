"""Several sweeper processes on one study: a journal file on one machine, PostgreSQL across machines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sae_sweep.sweep.storage import open_storage, storage_spec
from sae_sweep.table import write_results_table
from tests.helpers.sweep import PostgresServer, start_sweep

N_TRIALS = 8


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "journal":
        return f"journal:{tmp_path / 'study.log'}"
    return request.getfixturevalue("postgres").url


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_workers__two_sweepers_on_one_study_account_for_every_trial_once(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    url = storage_url(kind, tmp_path, request)
    storage = open_storage(storage_spec(url, tmp_path))
    # Pre-create the study: two workers creating it at once would race.
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    sweep = tmp_path / "sweep"
    args = ("hydra/sweeper=sae_optuna", "hydra.sweeper.sampler=random", f"hydra.sweeper.storage='{url}'",
            "hydra.sweeper.study_name=shared", f"hydra.sweeper.n_trials={N_TRIALS}", "train.num_samples=10000",
            "alpha=tag(log,interval(0.01,1))")
    workers = [start_sweep(sweep, *args, log=tmp_path / f"worker{i}.log") for i in range(2)]
    for i, w in enumerate(workers):
        assert w.wait(timeout=300) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]

    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    # Two workers may both ask the last trial: the total can exceed n_trials by at most one.
    assert N_TRIALS <= len(trials) <= N_TRIALS + 1
    assert [t.number for t in trials] == list(range(len(trials)))  # unique, none lost
    assert all(t.state == TrialState.COMPLETE for t in trials)
    pids = set()
    for t in trials:
        run_dir = sweep / f"trial_{t.number:05d}"
        assert Path(t.user_attrs["run_dir"]) == run_dir.resolve()
        cell = json.loads((run_dir / "cell.json").read_text())
        assert cell["trial"] == t.number
        pids.add(cell["pid"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["mmcs"] == pytest.approx(t.value)
    assert pids == {w.pid for w in workers}  # both workers ran trials
    df = write_results_table(sweep)
    assert sorted(df["trial"]) == [t.number for t in trials]


def test_workers__a_live_or_remote_sweepers_running_trial_is_left_alone_and_a_dead_ones_is_rerun(
        tmp_path: Path) -> None:
    import os
    import subprocess

    from sae_sweep.sweep.optuna_sweeper import HOST, _process_start
    from tests.helpers.sweep import ok, run_sweep

    def worker(pid: int) -> str:
        start = _process_start(pid)
        return f"{HOST}:{pid}" + (f":{start[1]}" if start else "")

    sweep = tmp_path / "sweep"
    study = optuna.create_study(study_name="smoke", direction="maximize",
                                storage=open_storage(storage_spec(None, sweep)))
    live = subprocess.Popen(["sleep", "120"])
    gone = subprocess.Popen(["true"])
    dead = worker(gone.pid)
    gone.wait()
    try:
        for owner in (worker(live.pid), dead, f"elsewhere:{os.getpid()}"):
            trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"worker": owner})
            study._storage.create_new_trial(study._study_id, template_trial=trial)
        ok(run_sweep(sweep, "hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=3", "alpha=interval(0.1,0.3)"))
    finally:
        live.kill()
        live.wait()
    trials = study.get_trials()
    # The live and the remote sweeper's trials still run and count; the dead one's is re-run as trial 3.
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING, TrialState.COMPLETE]
    assert trials[1].user_attrs["orphaned"] and trials[3].user_attrs["retry_of"] == 1
