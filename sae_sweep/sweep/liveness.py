"""Who owns a running Optuna trial, whether that sweeper still runs, and settling the trials none will finish.

Every trial the sweeper runs carries its owner (``worker``: host, pid and the pid's start time) from
the storage call that creates it; while it runs, :class:`Heartbeat` stamps it with the time. Before
every batch the sweeper calls :func:`reclaim`: a RUNNING trial whose sweeper is gone (on this host:
its process; elsewhere: a stamp older than ``stale_after_s``) is told from its run dir when that holds
a finished result, else failed as ``orphaned`` and re-run by a new trial; WAITING queue entries are
taken over the same way. Superseded trials do not count toward ``n_trials`` (:func:`counted`). A retry
whose dead attempt left a checkpoint takes over that attempt's run dir (:func:`adopt`) and continues
from it, so a trial killed at 1h59 of a 2-hour run loses at most ``train.checkpoint_every`` samples.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sae_sweep.kill import kill_point
from sae_sweep.record import (
    CELL_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_PREVIOUS_FILE,
    COMPLETED,
    DIVERGED,
    FAILED,
    PRUNED,
    SUMMARY_FILE,
    TRIAL_FILE,
    RecordError,
    check_finished,
    read_json,
    remove_checkpoints,
    write_json_atomic,
)
from sae_sweep.sweep.cells import drop_stranded_checkpoints, holds_record, repair_mirrors

log = logging.getLogger(__name__)

HOST = os.uname().nodename
# Trials that stand for nothing of their own: a dead sweeper's trial re-run as a new one (orphaned), a
# WAITING queue entry taken over by a new trial (queued), a second retry of one trial (duplicate), a
# trial whose parameters did not fit the study's (rejected: the sweep stopped with an error).
SUPERSEDED = ("orphaned", "queued", "duplicate", "rejected")
# A summary.json with one of these statuses is a finished result the study can be told.
FINAL = (COMPLETED, PRUNED, DIVERGED, FAILED)
# How a recovered trial's result reaches the study: (study, trial, summary, run dir).
TellFn = Callable[[optuna.Study, FrozenTrial, dict[str, Any], Path], Any]


def _process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process from /proc, or None where there is no /proc entry."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state is field 3, starttime 22
    return fields[0], fields[19]


def _worker_id() -> str:
    start = _process_start(os.getpid())
    return f"{HOST}:{os.getpid()}" + (f":{start[1]}" if start else "")


WORKER = _worker_id()  # the sweeper process that owns a running trial: host, pid and the pid's start time


def worker_alive(worker: str, heartbeat: float | None = None, stale_after_s: float = 900.0,
                 now: float | None = None) -> bool | None:
    """Whether the sweeper ``worker`` still runs: on this host from its process; elsewhere from its last
    ``heartbeat`` (seconds since the epoch), alive while younger than ``stale_after_s``; None when unknown."""
    host, _, rest = worker.partition(":")
    pid, _, start = rest.partition(":")
    if host != HOST or not pid.isdigit():
        if host == HOST or heartbeat is None:
            return None
        return (time.time() if now is None else now) - float(heartbeat) < stale_after_s
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    seen = _process_start(int(pid))
    if seen is None:
        return not Path("/proc/self/stat").exists()  # no /proc at all: the pid's existence is all we know
    state, started = seen
    # A zombie is dead; a pid that started at another time is another process that reuses the number.
    return state != "Z" and (not start or started == start)


class Heartbeat:
    """Stamps the given running trials with the time every ``interval_s`` from a thread, so sweepers on
    other hosts can tell this one is alive (``worker_alive``); the first stamp is made on entry."""

    def __init__(self, study: optuna.Study, trial_ids: Sequence[int], interval_s: float) -> None:
        self.study, self.trial_ids, self.interval_s = study, list(trial_ids), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sae_sweep-heartbeat", daemon=True)

    def _stamp(self) -> None:
        now = time.time()
        for trial_id in self.trial_ids:
            try:
                self.study._storage.set_trial_user_attr(trial_id, "heartbeat", now)
            except (UpdateFinishedTrialError, RuntimeError):
                pass  # finished meanwhile (told by another sweeper, or by this one just now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._stamp()
            except Exception as exc:  # a storage hiccup must not end the sweep; the next beat retries
                log.warning(f"heartbeat: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Heartbeat:
        self._stamp()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def counted(trials: optuna.Study | Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward n_trials: every trial created to run, except those superseded by another."""
    if isinstance(trials, optuna.Study):
        trials = trials.get_trials(deepcopy=False)
    return [t for t in trials if t.state != TrialState.WAITING and not any(t.user_attrs.get(k) for k in SUPERSEDED)]


def pending_retries(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Orphaned trials and taken-over queue entries that no trial re-runs yet, oldest first."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials if (t.user_attrs.get("orphaned") or t.user_attrs.get("queued"))
            and t.state.is_finished() and t.number not in retried]


def trial_subdir(sweep_dir: Path, number: int, uid: str) -> str:
    """A trial's run dir under the sweep dir: ``trial_NNNNN``, unless that holds another trial's record
    (another study in the same dir, or a study made anew): then ``trial_NNNNN~<uid[:8]>``."""
    base = f"trial_{number:05d}"
    for name in (base, f"{base}~{uid[:8]}", f"{base}~{uid}"):
        info = read_json(sweep_dir / name / TRIAL_FILE)
        if (info is not None and info.get("uid") == uid) or not holds_record(sweep_dir / name):
            return name
    raise FileExistsError(f"no free run dir for trial {number} under {sweep_dir}")


def trial_run_dir(trial: FrozenTrial, sweep_dir: Path) -> Path | None:
    """Where the sweeper ran ``trial`` (None for a trial without a uid: not created by this sweeper)."""
    uid = trial.user_attrs.get("uid")
    if not uid:
        return None
    root = Path(str(trial.user_attrs.get("sweep_dir") or sweep_dir))
    return root / trial_subdir(root, trial.number, str(uid))


def abandon(trial: FrozenTrial, sweep_dir: Path) -> None:
    """Clear what a dead sweeper's unfinished trial left that nothing would ever use, before the trial is
    failed: its run dir, when its job never recorded its cell (the sweeper writes the trial.json of a whole
    batch before the first job runs; Hydra makes a job's .hydra/ and log before the job starts). First, so a
    kill between the two leaves a running trial that the next reclaim settles the same way. Its checkpoints
    stay: the retry continues from them (:func:`adopt`)."""
    run_dir = trial_run_dir(trial, sweep_dir)
    if run_dir is None or not run_dir.is_dir():
        return
    if all(p.name in (TRIAL_FILE, ".hydra") or p.name.endswith(".log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / n).is_file() for n in (CHECKPOINT_FILE, CHECKPOINT_PREVIOUS_FILE))


def adopt(sweep_dir: Path, target: Path, info: dict[str, Any]) -> Path | None:
    """Give the retry ``info`` (its trial.json) the run dir of a dead attempt of the same trial (same
    ``cell``) that left a checkpoint: the dir becomes ``target`` and the retry's job continues from the
    checkpoint there (run.py: same run config, same checkpoint key). Returns the dir taken over, or None.

    The dir's trial.json is rewritten first, then the dir renamed in one step: a kill between the two
    leaves a dir whose trial.json names the retry, which the next retry of it takes over the same way.
    Other dead attempts' checkpoints of the trial (older ones) are removed; nothing would use them."""
    if target.exists():
        return None
    found = []
    for d in Path(sweep_dir).glob("trial_*"):
        t, summary = read_json(d / TRIAL_FILE), read_json(d / SUMMARY_FILE)
        if (d.is_dir() and t is not None and t.get("cell") == info["cell"] and t.get("uid") != info["uid"]
                and _has_checkpoint(d) and not (summary and summary.get("status") == COMPLETED)):
            number = t.get("number")
            found.append((number if isinstance(number, int) else -1, d))
    if not found:
        return None
    *older, (_, source) = sorted(found)
    for _, d in older:
        remove_checkpoints(d)
    write_json_atomic(source / TRIAL_FILE, info)
    kill_point("adopting")
    source.rename(target)
    return source


def supersede(study: optuna.Study, trial: FrozenTrial, why: str) -> bool:
    """Mark ``trial`` as superseded (``why`` in SUPERSEDED) and fail it; False if another sweeper finished it first."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, why, True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    return True


def reclaim(study: optuna.Study, sweep_dir: Path, stale_after_s: float,
            tell: TellFn) -> tuple[list[FrozenTrial], dict[str, int]]:
    """Settle every trial no live sweeper will finish; return the study's trials after it, and what was done.

    A RUNNING trial whose sweeper (on this host) is gone is told from its run dir (through ``tell``) when
    its summary.json holds a finished result, else failed as ``orphaned`` (a new trial re-runs it, from
    the dead one's last checkpoint when it left one: :func:`adopt`); a
    second retry of one trial (two sweepers retried it at once) is failed as ``duplicate``. A WAITING
    trial (a queue entry) is failed as ``queued`` and re-run as a new trial the same way: a trial is
    only ever run by a trial created with its sweeper in one storage call, so no moment leaves a
    running trial without an owner. A trial of a live sweeper is left alone: on another host, one whose
    heartbeat stamp is younger than ``stale_after_s`` (or that has none, from before stamps existed).
    """
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    retries: dict[int, list[int]] = {}
    for t in trials:
        if t.user_attrs.get("retry_of") is not None:
            retries.setdefault(int(t.user_attrs["retry_of"]), []).append(t.number)
    done: dict[str, int] = {}

    def note(what: str) -> None:
        done[what] = done.get(what, 0) + 1

    for t in trials:
        if t.state == TrialState.WAITING:
            if supersede(study, t, "queued"):
                note("queued trials taken over")
        elif t.state == TrialState.RUNNING and worker_alive(
                str(t.user_attrs.get("worker", "")), t.user_attrs.get("heartbeat"), stale_after_s) is False:
            retry_of = t.user_attrs.get("retry_of")
            if retry_of is not None and t.number != min(retries[int(retry_of)]):
                abandon(t, sweep_dir)
                supersede(study, t, "duplicate")
            elif recover(study, t, sweep_dir, tell):
                note("dead sweepers' trials told from their run dirs")
            else:
                abandon(t, sweep_dir)
                if supersede(study, t, "orphaned"):
                    note("dead sweepers' trials re-queued")
                    kill_point("requeued")
    if done:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    return trials, done


def recover(study: optuna.Study, trial: FrozenTrial, sweep_dir: Path, tell: TellFn) -> bool:
    """Tell a dead sweeper's trial the finished result its run dir holds, and mend the W&B run it left
    unfinished (cells.repair_mirrors); False when there is no finished result."""
    run_dir = trial_run_dir(trial, sweep_dir)
    if run_dir is None:
        return False
    uid = trial.user_attrs["uid"]
    info, cell = read_json(run_dir / TRIAL_FILE), read_json(run_dir / CELL_FILE)
    summary = read_json(run_dir / SUMMARY_FILE)
    # The job removes an earlier attempt's summary before it records its cell: with this trial's
    # trial.json and cell.json, the summary is this trial's own result.
    if not (info and info.get("uid") == uid and cell and cell.get("trial") == trial.number
            and summary and summary.get("status") in FINAL):
        return False
    if summary.get("status") == COMPLETED:
        try:
            check_finished(run_dir)
        except RecordError as exc:
            log.warning(f"resume: {exc}; trial {trial.number} runs again")
            return False
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "recovered", True)
        tell(study, trial, summary, run_dir)
    except UpdateFinishedTrialError:
        pass  # another sweeper told it first
    if summary.get("status") in (COMPLETED, DIVERGED, PRUNED):
        drop_stranded_checkpoints(run_dir)  # killed between its summary and their removal (run.py)
    repair_mirrors([run_dir])  # its sweeper may have died before the run's W&B run finished
    return True
