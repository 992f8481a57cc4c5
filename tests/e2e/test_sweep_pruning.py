"""Pruning: each run reports its objective at every evaluation to its trial through the storage."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from sae_sweep.sweep.storage import open_storage, storage_spec
from tests.helpers.sweep import ok, run_sweep, table

MEDIAN = ("hydra.sweeper.pruner=median", "+hydra.sweeper.pruner_kwargs.n_startup_trials=1",
          "+hydra.sweeper.pruner_kwargs.n_warmup_steps=0")
HALVING = ("hydra.sweeper.pruner=successive_halving", "+hydra.sweeper.pruner_kwargs.min_resource=1",
           "+hydra.sweeper.pruner_kwargs.reduction_factor=4")
JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2")
# MMCS stays at its starting value at lr 1e-7, while lr 1e-2 learns: the slow ones are hopeless.
LEARNS, STUCK = "train.lr=tag(log,interval(0.009,0.011))", "train.lr=tag(log,interval(1e-8,1e-7))"


def test_pruning__hopeless_trials_stop_at_their_first_evaluation_in_process_and_in_joblib_workers(
        tmp_path: Path) -> None:
    sweep = tmp_path / "prune"
    common = ("hydra/sweeper=sae_optuna", "train.num_samples=10000")
    # Successive halving ranks trials at its rungs: the reference must have run under it to be ranked.
    ok(run_sweep(sweep, *common, *HALVING, "hydra.sweeper.n_trials=1", LEARNS))
    ok(run_sweep(sweep, *common, *MEDIAN, "hydra.sweeper.n_trials=2", STUCK))  # in-process launcher
    ok(run_sweep(sweep, *common, *HALVING, *JOBLIB, "hydra.sweeper.n_trials=4", STUCK))  # joblib workers

    study = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep)))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 3
    assert sorted(trials[0].intermediate_values) == [2560, 5120, 7680, 9984]  # reported at every evaluation
    for t in trials[1:]:
        assert list(t.intermediate_values) == [2560]  # stopped at the first evaluation
        summary = json.loads((sweep / f"trial_{t.number:05d}" / "summary.json").read_text())
        assert summary["status"] == "pruned" and summary["samples"] == 2560
    assert list(table(sweep)["status"]) == ["completed"] + ["pruned"] * 3


def test_pruning__pruned_trials_finish_their_wandb_runs_as_pruned_with_the_trial_number(tmp_path: Path) -> None:
    from tests.helpers.wandb_offline import read_wandb_offline_run

    sweep = tmp_path / "prune_wb"
    common = ("hydra/sweeper=sae_optuna", "train.num_samples=10000", "logger.wandb.mode=offline", *MEDIAN)
    ok(run_sweep(sweep, *common, "hydra.sweeper.n_trials=1", LEARNS))
    ok(run_sweep(sweep, *common, "hydra.sweeper.n_trials=2", STUCK))
    completed, pruned = (read_wandb_offline_run(sweep / f"trial_{i:05d}") for i in (0, 1))
    assert completed["exit_code"] == 0 and completed["summary"]["pruned"] is False
    assert pruned["exit_code"] == 0 and pruned["summary"]["pruned"] is True and "pruned" in pruned["tags"]
    for number, wb in enumerate((completed, pruned)):
        assert wb["config"]["trial"] == number and wb["summary"]["trial"] == number
