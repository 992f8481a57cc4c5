"""The thread policy (sae_sweep/threads.py): what it picks for given inputs, and that runs get it."""

from __future__ import annotations

import json

import pytest

from sae_sweep.threads import (
    POLICY_ENV,
    SMALL_STEP_MACS,
    choose_threads,
    launcher_workers,
    set_wait_policy,
    single_run_threads,
    usable_cores,
)
from tests.conftest import REPO, SMOKE, run_cli
from tests.sweep_helpers import ok, run_sweep


@pytest.mark.parametrize("requested, cores, workers, expected", [
    (3, 2, 1, 3),   # an explicit train.threads always wins
    (1, 8, 4, 1),
    (0, 2, 1, None),  # alone: torch's default (one thread per physical core)
    (0, 8, 1, None),
    (0, 2, 2, 1),   # joblib n_jobs=2 on 2 cores: one thread each
    (0, 8, 3, 2),
    (0, 2, 4, 1),   # more workers than cores: still one thread
])
def test_choose_threads__explicit_count_else_cores_shared_among_workers(requested, cores, workers, expected):
    assert choose_threads(requested, cores=cores, workers=workers, environ={}) == expected


def test_choose_threads__policy_off_leaves_torchs_default():
    assert choose_threads(0, cores=2, workers=2, environ={POLICY_ENV: "off"}) is None
    assert choose_threads(2, cores=2, environ={POLICY_ENV: "off"}) == 2


def test_single_run_threads__one_for_a_small_step_else_as_requested_or_the_process_default():
    assert single_run_threads(0, batch_size=256, n=32, dict_size=128, environ={}) == 1  # the smoke run
    assert single_run_threads(0, batch_size=256, n=256, dict_size=1024, environ={}) is None
    assert single_run_threads(0, batch_size=256, n=128, dict_size=1024, environ={}) == 1  # 2^25 MACs
    assert single_run_threads(0, batch_size=256, n=64, dict_size=SMALL_STEP_MACS // (256 * 64), environ={}) is None
    assert single_run_threads(2, batch_size=256, n=32, dict_size=128, environ={}) == 2  # explicit wins
    assert single_run_threads(0, batch_size=256, n=32, dict_size=128, environ={POLICY_ENV: "off"}) is None


def test_set_wait_policy__passive_unless_set_or_off():
    env: dict[str, str] = {}
    set_wait_policy(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_wait_policy(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {POLICY_ENV: "off"}
    set_wait_policy(env)
    assert "OMP_WAIT_POLICY" not in env


def test_launcher_workers__joblib_n_jobs_else_one():
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher_workers({"_target_": joblib, "n_jobs": 3}) == 3
    assert launcher_workers({"_target_": joblib, "n_jobs": -1}) >= 1
    assert launcher_workers({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) == 1
    assert launcher_workers({"_target_": "hydra_plugins.sae_sweep_plugins.PackedLauncher", "n_jobs": 8}) == 1
    assert launcher_workers(None) == 1


def test_cli__a_run_gets_the_passive_wait_policy_and_records_it(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(POLICY_ENV, raising=False)
    res = run_cli(*SMOKE, f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["omp_wait_policy"] == "PASSIVE" and summary["threads"] == 1  # a small step: one thread


def test_cli__a_large_step_keeps_the_process_thread_count_and_an_explicit_count_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    large = ("data.n=256", "dict_size=1024", "train.num_samples=2560", "train.eval_every=2560", "data.eval_size=256")
    for name, env in (("large", {}), ("off", {POLICY_ENV: "off"})):  # off: the process's own thread count
        res = run_cli(*SMOKE, *large, f"hydra.run.dir={tmp_path}/{name}", cwd=REPO, env=env)
        assert res.returncode == 0, res.stderr
    threads = {name: json.loads((tmp_path / name / "summary.json").read_text())["threads"] for name in ("large", "off")}
    assert threads["large"] == threads["off"], threads
    small = run_cli(*SMOKE, f"hydra.run.dir={tmp_path}/small", cwd=REPO)
    assert small.returncode == 0, small.stderr
    assert json.loads((tmp_path / "small" / "summary.json").read_text())["threads"] == 1
    res = run_cli(*SMOKE, "train.threads=2", f"hydra.run.dir={tmp_path}/two", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["threads"] == 2


def test_multirun__joblib_workers_take_one_thread_each_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(POLICY_ENV, raising=False)
    # As many workers as usable cores (at least 2): one thread each.
    n_jobs = max(2, usable_cores())
    ok(run_sweep(tmp_path / "sweep", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", "train.threads=0",
                 "alpha=0.1,0.3"))
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(summaries) == 2
    assert all(s["threads"] == 1 and s["omp_wait_policy"] == "PASSIVE" for s in summaries), summaries
