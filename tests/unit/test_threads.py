"""The thread policy (sae_sweep/threads.py): what it picks for given inputs."""

from __future__ import annotations

import os
import time

import pytest
import torch

from sae_sweep.threads import (
    POLICY_ENV,
    SMALL_STEP_MACS,
    CoreShare,
    _cpu_seconds,
    choose_threads,
    launcher_workers,
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


class _Machine:
    """A fake machine for CoreShare: the clock, the machine's busy CPU seconds and this process's own."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.t += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


def _share(machine: _Machine, full: int = 2, cores: int = 2) -> CoreShare:
    return CoreShare(full, period=0.5, clock=lambda: machine.t, cpu=lambda: machine.busy, own=lambda: machine.own,
                     cores=cores)


@pytest.fixture
def torch_threads_kept():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_core_share__starts_at_one_thread_and_takes_the_cores_once_the_others_are_quiet(torch_threads_kept):
    m = _Machine()
    share = _share(m)
    assert share.threads == 1 and torch.get_num_threads() == 1  # runs started together never spin at once
    m.run(0.2, own_cores=1, other_cores=0)
    share.tick()
    assert share.threads == 1  # under one period: no look yet
    m.run(0.4, own_cores=1, other_cores=0.1)
    share.tick()
    assert share.threads == 2 and torch.get_num_threads() == 2
    assert share.shared_s == pytest.approx(0.6)


def test_core_share__drops_to_one_thread_beside_a_busy_process_and_comes_back_with_hysteresis(torch_threads_kept):
    m = _Machine()
    share = _share(m)
    m.run(0.6, own_cores=1, other_cores=0)
    share.tick()
    assert share.threads == 2
    m.run(0.6, own_cores=2, other_cores=0.6)  # another process takes 0.6 of a core
    share.tick()
    assert share.threads == 1
    m.run(0.6, own_cores=1, other_cores=0.4)  # 0.4: no longer enough to drop, not yet quiet enough to rise
    share.tick()
    assert share.threads == 1
    m.run(0.6, own_cores=1, other_cores=0.15)  # quiet enough
    share.tick()
    assert share.threads == 2
    m.run(0.6, own_cores=2, other_cores=0.4)  # at two threads 0.4 keeps them (the band between the rules)
    share.tick()
    assert share.threads == 2
    assert share.shared_s == pytest.approx(0.6 + 0.6 + 0.6)


def test_core_share__close_restores_the_full_count_and_no_proc_stat_keeps_it(torch_threads_kept):
    m = _Machine()
    share = _share(m, full=2)
    assert torch.get_num_threads() == 1
    share.close()
    assert share.threads == 2 and torch.get_num_threads() == 2
    blind = CoreShare(2, clock=lambda: m.t, cpu=lambda: None, own=lambda: m.own, cores=2)
    assert blind.threads == 2  # where the machine's load cannot be read, nothing changes
    m.run(1.0, own_cores=2, other_cores=2)
    blind.tick()
    assert blind.threads == 2 and blind.shared_s == 0


def test_cpu_seconds__reads_this_machines_busy_time_and_grows_with_work():
    cpus = os.sched_getaffinity(0)
    first = _cpu_seconds(cpus)
    assert first is not None and first > 0
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 CPU seconds of this process
        pass
    assert _cpu_seconds(cpus) - first >= 0.2  # clock ticks: 10 ms steps
    assert _cpu_seconds(set()) == 0


def test_launcher_workers__joblib_n_jobs_else_one():
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher_workers({"_target_": joblib, "n_jobs": 3}) == 3
    assert launcher_workers({"_target_": joblib, "n_jobs": -1}) >= 1
    assert launcher_workers({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) == 1
    assert launcher_workers({"_target_": "hydra_plugins.sae_sweep_plugins.PackedLauncher", "n_jobs": 8}) == 1
    assert launcher_workers(None) == 1
