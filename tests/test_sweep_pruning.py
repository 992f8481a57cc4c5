"""Pruning: each run reports its objective at every evaluation to its trial through the storage."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sae_sweep.sweep.storage import open_storage, storage_spec
from tests.sweep_helpers import ok, run_sweep, table

PRUNERS = {
    "median": ("hydra.sweeper.pruner=median", "+hydra.sweeper.pruner_kwargs.n_startup_trials=1",
               "+hydra.sweeper.pruner_kwargs.n_warmup_steps=0"),
    "successive_halving": ("hydra.sweeper.pruner=successive_halving",
                           "+hydra.sweeper.pruner_kwargs.min_resource=1",
                           "+hydra.sweeper.pruner_kwargs.reduction_factor=2"),
}
LAUNCHERS = {
    "in-process": (),
    "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"),
}


@pytest.mark.parametrize("pruner, launcher", [("median", "in-process"), ("successive_halving", "joblib")])
def test_pruning__a_hopeless_trial_is_stopped_at_its_first_evaluation_and_recorded_pruned(
        tmp_path: Path, pruner: str, launcher: str) -> None:
    sweep = tmp_path / "prune"
    common = ("hydra/sweeper=sae_optuna", "train.num_samples=10000", *PRUNERS[pruner])
    # A reference trial that learns (lr 1e-2), then trials that cannot (lr 1e-7): MMCS stays at its start.
    ok(run_sweep(sweep, *common, "hydra.sweeper.n_trials=1", "train.lr=tag(log,interval(0.009,0.011))"))
    ok(run_sweep(sweep, *common, *LAUNCHERS[launcher], "hydra.sweeper.n_trials=3",
                 "train.lr=tag(log,interval(1e-8,1e-7))"))

    study = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep)))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert sorted(trials[0].intermediate_values) == [2560, 5120, 7680, 9984]  # reported at every evaluation
    for t in trials[1:]:
        assert list(t.intermediate_values) == [2560]  # stopped at the first evaluation
        summary = json.loads((sweep / f"trial_{t.number:05d}" / "summary.json").read_text())
        assert summary["status"] == "pruned" and summary["samples"] == 2560
    assert list(table(sweep)["status"]) == ["completed", "pruned", "pruned"]
