"""The thread policy (sae_sweep/threads.py): what it picks for given inputs."""

from __future__ import annotations

import pytest

from sae_sweep.threads import (
    POLICY_ENV,
    SMALL_STEP_MACS,
    choose_threads,
    launcher_workers,
    set_wait_policy,
    single_run_threads,
)


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
