"""Named kill points: a test hook that ends the process at an exact line, as ``kill -9`` would.

``SAE_SWEEP_KILL_AT=<point>`` makes the process exit (``os._exit(9)``: no cleanup, no flush, no
``finally``) the first time it reaches ``kill_point("<point>")``; ``<point>:<n>`` the n-th time.
Unset, a kill point costs one environment lookup. The points, in the order a trial meets them:
``asked`` (a trial was just created in the study), ``requeued`` (a dead trial was just failed, before
its retry exists), ``job_started`` (the job recorded its cell, before training), ``wandb_log`` (an
evaluation row is about to reach the W&B run: it dies mid-training, its W&B run open),
``wandb_finish`` (summary.json is written, the W&B run not yet finished) and ``before_tell`` (the
jobs of a batch returned, before the study is told); in ``python -m sae_sweep.refine``,
``refine_after_record`` (a round is recorded as started, nothing launched) and ``refine_after_command``
(one of its multiruns returned, the record not yet told); inside a run (checkpoint.py),
``checkpoint_writing`` (halfway through a checkpoint's temp file), ``checkpoint_replacing`` (between two
members' renames of a pack's round) and ``checkpoint_written`` (a round is renamed into place) and ``summary_written`` (a run's summary.json is
written, its checkpoints not yet removed); in the Optuna sweeper, ``adopting`` (a retry's trial.json is
written into the dead attempt's run dir, not yet renamed to the retry's).

``SAE_SWEEP_RAISE_AT=<point>`` (or ``<point>:<n>``) instead raises :class:`InjectedFailure` (a
RuntimeError) at ``raise_point("<point>")``: the run fails as a bug or a full disk would, its
``finally`` blocks and failed record included. Its one point: ``checkpoint_written`` (checkpoint.py,
right after the kill point of that name). Unset, it too costs one environment lookup. A leaf module:
any layer may hold a point.
"""

from __future__ import annotations

import os

KILL_ENV = "SAE_SWEEP_KILL_AT"
RAISE_ENV = "SAE_SWEEP_RAISE_AT"
_reached: dict[tuple[str, str], int] = {}


class InjectedFailure(RuntimeError):
    """Raised at a raise point named by SAE_SWEEP_RAISE_AT (tests only)."""


def _due(env: str, spec: str, name: str) -> bool:
    """Whether this visit of point ``name`` is the one ``spec`` (``point`` or ``point:n``) names."""
    point, _, nth = spec.partition(":")
    if point != name:
        return False
    _reached[env, name] = _reached.get((env, name), 0) + 1
    return _reached[env, name] == (int(nth) if nth else 1)


def kill_point(name: str) -> None:
    spec = os.environ.get(KILL_ENV)
    if spec and _due(KILL_ENV, spec, name):
        os._exit(9)


def raise_point(name: str) -> None:
    spec = os.environ.get(RAISE_ENV)
    if spec and _due(RAISE_ENV, spec, name):
        raise InjectedFailure(f"{RAISE_ENV}={spec}: raised at {name}")
