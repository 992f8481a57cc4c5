"""The thread policy: how many torch threads a run takes, and when it gives cores back.

Torch's OpenMP threads spin while they wait for a core another process holds, so on a shared machine
two threads can make a run many times slower than one; with ``OMP_WAIT_POLICY=PASSIVE`` a waiting
thread sleeps instead, but then a second thread buys nothing over one, alone or not (measured:
benchmarks/README.md, "Threads on a shared machine"; the user's view: docs/runs.md). So by default:

* ``train.threads=0`` gives a single run with a small step (``batch_size * n * J`` below
  ``SMALL_STEP_MACS``) one thread: there a second thread buys nothing on a quiet machine (its kernels are
  too short to split) and costs many times over on a busy one;
* a larger single run (or one joblib worker's share of the cores, ``cores // n_jobs``) keeps torch's
  spinning threads while it has the cores to itself and drops to one thread while another process is
  busy (:class:`CoreShare`: it reads the machine's CPU time twice a second from /proc/stat, less its
  own). A run's thread count then follows the machine's load, which changes its results only within
  float tolerance (as ``train.threads`` does): set ``train.threads`` for a fixed count;
* a user's ``OMP_WAIT_POLICY`` is kept (OpenMP reads it when torch loads);
* ``SAE_SWEEP_THREAD_POLICY=off`` restores torch's and OpenMP's own defaults (for comparison).

Packed lanes run one thread each (lanes.py). Every change of torch's thread count goes through
:func:`set_torch_threads` or :func:`torch_threads`; torch is imported inside them only.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path

POLICY_ENV = "SAE_SWEEP_THREAD_POLICY"
SMALL_STEP_MACS = 1 << 26  # batch x n x J of one GEMM below which one thread is as fast as two (bench_threads.py)


def policy_on(environ: MutableMapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(POLICY_ENV, "").lower() != "off"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


def choose_threads(requested: int, *, cores: int | None = None, workers: int = 1,
                   environ: MutableMapping[str, str] | None = None) -> int | None:
    """The torch thread count for a run: ``requested`` when > 0; else, for one of ``workers`` > 1 concurrent
    worker processes, its share of the usable cores (at least 1); None = leave torch's default (a process
    alone, or the policy off)."""
    if requested > 0:
        return requested
    if workers <= 1 or not policy_on(environ):
        return None
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, workers))


def launcher_workers(launcher: dict | None) -> int:
    """How many jobs a Hydra launcher config runs at once on this machine (joblib: n_jobs; else 1)."""
    if not launcher or "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = launcher.get("n_jobs", 1)
    if not isinstance(n_jobs, int) or n_jobs < 1:  # joblib's -1 = all cores: one thread each
        return usable_cores()
    return n_jobs


def single_run_threads(requested: int, *, batch_size: int, n: int, dict_size: int,
                       environ: MutableMapping[str, str] | None = None) -> int | None:
    """The torch thread count for one SAE trained alone: ``requested`` when > 0; 1 for a small step (module
    docstring); None = leave the process's count (torch's default, or what a launcher chose)."""
    if requested > 0:
        return requested
    if policy_on(environ) and batch_size * n * dict_size < SMALL_STEP_MACS:
        return 1
    return None


def set_torch_threads(n: int | None) -> int:
    """Set torch's intra-op thread count to ``n`` (None or 0: leave it as it is); returns the count before.

    The one place sae_sweep sets it, by this rule: a run takes ``train.threads`` when > 0, else
    :func:`single_run_threads`'s choice for a run alone, else the process's count (torch's default, or a
    launcher's: :func:`choose_threads` for a joblib worker, ``hydra.launcher.threads`` or one per usable
    core for the packed launcher); while lanes run, one thread each (:func:`torch_threads`, lanes.py); the
    sparse step's short kernels, one (step.py).
    """
    import torch  # here, not at import time (module docstring)

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    return before


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's thread count ``n`` inside the block and the count before it after (None, or the count
    it has already: nothing is set)."""
    import torch

    if not n or n == torch.get_num_threads():
        yield
        return
    before = set_torch_threads(n)
    try:
        yield
    finally:
        set_torch_threads(before)


def _cpu_seconds(cpus: set[int]) -> float | None:
    """Busy CPU seconds so far of the machine's CPUs ``cpus`` (/proc/stat), or None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            f = [int(v) for v in rest.split()]
            busy += f[0] + f[1] + f[2] + f[5] + f[6] + f[7]  # user nice system irq softirq steal (not idle, iowait)
    return busy / os.sysconf("SC_CLK_TCK")


class CoreShare:
    """Torch's thread count for a run that may have the cores to itself: ``full`` while other processes
    leave them free, one while another process is busy (module docstring).

    :meth:`tick` is called every step and looks every ``period`` seconds: the other processes' busy
    cores are the machine's busy CPU time over the last period less this process's own. It starts at one
    thread, so runs started together never spin against each other. ``shared_s`` is the time spent below
    ``full`` so far.
    """

    def __init__(self, full: int, period: float = 0.5, clock=time.monotonic, cpu=None, own=time.process_time,
                 cores: int | None = None):
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:  # no affinity API (macOS): no /proc/stat either
            cpus = set()
        self.cores, self.full, self.period = cores or max(1, len(cpus)), full, period
        self.clock, self.own = clock, own
        self.cpu = cpu if cpu is not None else (lambda: _cpu_seconds(cpus))
        self.shared_s = 0.0
        self.threads = full
        self.last = self._sample()
        if self.last[1] is not None and full > 1:
            self._set(1)

    def _sample(self) -> tuple[float, float | None, float]:
        return self.clock(), self.cpu(), self.own()

    def _set(self, n: int) -> None:
        set_torch_threads(n)
        self.threads = n

    def tick(self) -> None:
        if self.clock() - self.last[0] < self.period:
            return
        t, busy, own = now = self._sample()
        t0, busy0, own0 = self.last
        self.last = now
        if busy is None or busy0 is None:
            return
        if self.threads < self.full:
            self.shared_s += t - t0
        others = max(0.0, (busy - busy0) - (own - own0)) / max(t - t0, 1e-9)  # other processes' busy cores
        want = min(self.full, max(1, math.floor(self.cores - others + 0.5)))
        if want < self.threads or math.floor(self.cores - others + 0.2) >= want > self.threads:  # hysteresis up
            self._set(want)

    def close(self) -> None:
        """Back to ``full`` (the process's count before): a later run in this process starts from it."""
        if self.threads != self.full:
            self._set(self.full)
