"""A sweep's progress line: cells done / total, failures so far and an ETA, one line per finished cell.

The sweeper writes ``progress.json`` into the sweep dir (how many cells this invocation launches, and
when it began); every job, whichever launcher runs it (in-process, a joblib worker, a packed group),
prints the line when its record is written, counting the records written since then. Two jobs that
finish together would both count two records; a lock file holds the last number printed, so the lines
of one invocation count 1, 2, 3, ... whatever the launcher. Torch-free.
"""

from __future__ import annotations

import fcntl
import json
import sys
import time
from pathlib import Path
from typing import Any

from sae_sweep.record import COMPLETED, PROGRESS_FILE, PROGRESS_LOCK, PRUNED, SUMMARY_FILE, read_json

OK = (COMPLETED, PRUNED)


def start_progress(sweep_dir: Path, total: int) -> None:
    """Record that this invocation launches ``total`` cells from now on (atomic write)."""
    tmp = Path(sweep_dir) / f".{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps({"total": int(total), "started_at": time.time()}))
    tmp.replace(Path(sweep_dir) / PROGRESS_FILE)


def format_eta(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def count_records(sweep_dir: Path, started: float) -> tuple[int, int]:
    """(records written since ``started``, how many of them failed)."""
    done = failed = 0
    for path in Path(sweep_dir).glob(f"*/{SUMMARY_FILE}"):
        if path.stat().st_mtime < started:
            continue
        summary = read_json(path) or {}
        done += 1
        failed += summary.get("status") not in OK
    return done, failed


def progress_line(sweep_dir: Path, now: float | None = None, claim: bool = False) -> str | None:
    """``3/8 cells done (1 failed), 0:00:24 elapsed, ETA 0:00:40``, or None without progress.json.

    ``claim``: a finished job's line (each job claims once, after its record is written); its count is
    one more than the last line printed in this invocation, under the sweep dir's lock, so jobs that
    finish together never print the same count twice.
    """
    info = read_json(Path(sweep_dir) / PROGRESS_FILE)
    if not info:
        return None
    now = time.time() if now is None else now
    started, total = float(info["started_at"]), int(info["total"])
    if claim:
        with open(Path(sweep_dir) / PROGRESS_LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lock.seek(0)
            last = json.loads(lock.read() or "{}")
            printed = int(last.get("printed", 0)) if last.get("started_at") == started else 0
            _, failed = count_records(sweep_dir, started)
            done = printed + 1
            lock.seek(0)
            lock.truncate()
            lock.write(json.dumps({"started_at": started, "printed": done}))
            lock.flush()
    else:
        done, failed = count_records(sweep_dir, started)
    elapsed = now - started
    eta = format_eta(elapsed / done * max(total - done, 0)) if done else "?"
    return (f"{Path(sweep_dir).name}: {done}/{total} cells done ({failed} failed), "
            f"{format_eta(elapsed)} elapsed, ETA {eta}")


class ProgressSink:
    """A metric sink whose finish prints the sweep's progress line to stderr (after summary.json is written)."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = Path(sweep_dir)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        line = progress_line(self.sweep_dir, claim=True)
        if line:
            sys.stderr.write(f"[progress] {line}\n")
            sys.stderr.flush()
