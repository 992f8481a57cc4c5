"""The thread policy: how many torch threads a run takes, and how its OpenMP threads wait.

Torch's OpenMP threads spin while they wait for a core another process holds, so on a shared machine
two threads can make a run many times slower than one; with ``OMP_WAIT_POLICY=PASSIVE`` a waiting
thread sleeps instead, but wakes too slowly for a small step's short kernels. Measurements:
benchmarks/bench_threads.py and benchmarks/README.md; the user's view: docs/runs.md. So by default:

* ``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported (the entry points call
  :func:`set_wait_policy`; child processes, e.g. joblib workers, inherit it); a value the user set
  is kept;
* ``train.threads=0`` gives a single run with a small step (``batch_size * n * J`` below
  ``SMALL_STEP_MACS``) one thread: there a second thread buys nothing on a quiet machine (its kernels are
  too short to split) and costs many times over on a busy one (it waits for a core another process
  holds), and with one thread the wait policy no longer matters (benchmarks/bench_threads.py);
* a larger single run keeps torch's default (one thread per physical core: the GEMMs are long enough to
  split), and each of a joblib launcher's concurrent workers gets ``cores // n_jobs`` of the usable cores
  (``os.sched_getaffinity``), at least one (the packed launcher sets its own);
* ``SAE_SWEEP_THREAD_POLICY=off`` restores torch's and OpenMP's own defaults (for comparison).

Packed lanes run one thread each (lanes.py). Every change of torch's thread count goes through
:func:`set_torch_threads` or :func:`torch_threads`; torch is imported inside them only, so the entry
points can set the wait policy here before torch loads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping

POLICY_ENV = "SAE_SWEEP_THREAD_POLICY"
WAIT_POLICY = "PASSIVE"
SMALL_STEP_MACS = 1 << 26  # batch x n x J of one GEMM below which one thread is as fast as two (bench_threads.py)


def policy_on(environ: MutableMapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(POLICY_ENV, "").lower() != "off"


def set_wait_policy(environ: MutableMapping[str, str] | None = None) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set one or turned the policy off; before torch loads."""
    environ = os.environ if environ is None else environ
    if policy_on(environ):
        environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


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
