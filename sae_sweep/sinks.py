"""Metric sinks: the JSONL file in the run dir is the record; W&B mirrors it.

A sink takes a flat dict of named metrics per evaluation (``log``) and the run's final summary
(``finish``). The trainer only sees the :class:`MetricSink` protocol; wandb is imported here alone.

A run dir's record has one offline W&B run as its mirror. A kill damages it in two ways, both mended
here: an attempt killed while training leaves a run with no exit record, which the next attempt
removes as it opens its own (:func:`remove_killed_runs`; a finished run of an earlier failed attempt
is kept, as W&B keeps any finished run); a run killed after summary.json was written and before its
W&B run finished is a finished cell that no attempt runs again, so a resumed sweep rewrites its mirror
from the record (:func:`repair_wandb_mirror`). Telling a finished offline run from an unfinished one
needs its records read from disk (:func:`read_wandb_records`): that much of the file format lives
here for it; the tests' reader of a whole run (history, summary, config) is tests/helpers/wandb_offline.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sae_sweep.kill import kill_point
from sae_sweep.record import COMPLETED, CONFIG_FILE, METRICS_FILE, PRUNED, SUMMARY_FILE, read_json


class MetricSink(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _logged_value(v: Any) -> Any:
    """A metrics.jsonl value as it was logged (the inverse of :func:`_json_safe`: null was NaN)."""
    if v is None:
        return math.nan
    return float(v) if v in ("inf", "-inf") else v


def read_rows(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of a metrics.jsonl file; ValueError when it holds fewer whole rows."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if len(rows) == n:
                break
            if not line.endswith("\n"):
                break  # a row cut short by a kill
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}: row {len(rows) + 1} is not a JSON object")
            rows.append(row)
    if len(rows) < n:
        raise ValueError(f"{path}: {len(rows)} whole rows, the checkpoint stands for {n}")
    return rows


class JsonlSink:
    """Appends one JSON object per evaluation to ``metrics.jsonl`` (flushed each line).

    ``keep``: rows already logged by the run this one continues (a resumed run, checkpoint.py): the
    file is cut back to them (rows logged after its checkpoint are logged again), else it starts empty."""

    def __init__(self, path: Path, keep: list[dict[str, Any]] | None = None):
        self.path = path
        self.rows = 0  # rows in the file: what a checkpoint taken now stands for
        if keep:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in keep), encoding="utf-8")
            tmp.replace(path)
            self.rows = len(keep)
        self._f = open(path, "a" if keep else "w", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **{k: _json_safe(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        self.rows += 1

    def finish(self, summary: dict[str, Any]) -> None:
        self._f.close()


class WandbSink:
    """One W&B run per run dir; offline by default, always finished (failed runs with exit code 1).

    ``config`` is the run's resolved config, as config.yaml holds it: its ``logger.wandb`` sets the mode,
    project, entity and tags, and the group (else ``group``, else the config's ``name``); the run's
    config is ``config`` with the Optuna ``trial`` number. The killed attempts' runs in the run dir are
    removed first (:func:`remove_killed_runs`). ``run_id`` fixes the W&B id (a rewrite keeps the recorded one).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, name: str, group: str | None = None,
                 trial: int | None = None, run_id: str | None = None):
        import wandb  # imported here so the rest of the package never pays for it

        w = config["logger"]["wandb"]
        remove_killed_runs(run_dir)
        self.run = wandb.init(
            dir=str(run_dir),
            mode=w["mode"],
            project=w["project"],
            entity=w["entity"],
            name=name,
            group=w["group"] or group or config["name"],
            tags=w["tags"] or None,
            config={**config, "trial": trial},
            id=run_id,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        kill_point("wandb_log")
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                self.run.summary[k] = v
        # A pruned trial ended as the study asked: finished, not failed, and marked so in summary and tags.
        pruned = summary.get("status") == PRUNED
        self.run.summary["pruned"] = pruned
        if pruned:
            self.run.tags = (*(self.run.tags or ()), "pruned")
        kill_point("wandb_finish")
        self.run.finish(exit_code=0 if summary.get("status") in (COMPLETED, PRUNED) else 1)


def log_report_run(
    *, run_dir: Path, mode: str, project: str, name: str, group: str | None, images: dict[str, Path],
    summary: dict[str, Any], entity: str | None = None,
) -> None:
    """One W&B run holding a sweep's analysis: every figure as an image and the estimates as summary.

    The run's id is the sweep dir's (:func:`analysis_run_id`), so analysing a sweep again resumes and
    updates its one analysis run instead of adding another; offline, the superseded local copies are
    removed (each new one holds the whole analysis, and ``wandb sync`` would upload it to the same run).
    """
    import wandb

    run_id = analysis_run_id(run_dir)
    run = wandb.init(dir=str(run_dir), mode=mode, project=project, entity=entity, name=name, group=group,
                     id=run_id, resume="allow", job_type="analysis", reinit="create_new",
                     settings=wandb.Settings(silent=True, console="off"))
    try:
        run.log({key: wandb.Image(str(path)) for key, path in images.items()}, step=0)
        for k, v in summary.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                run.summary[k] = v
    finally:
        run.finish()
    if mode == "offline":
        current = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run's own dir
        for old in Path(run_dir).glob(f"wandb/offline-run-*-{run_id}"):
            if old.resolve() != current.resolve():
                shutil.rmtree(old, ignore_errors=True)


def analysis_run_id(sweep_dir: Path) -> str:
    """The W&B id of a sweep's analysis run: fixed by the sweep dir's absolute path."""
    digest = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]
    return f"analysis-{digest}"


# --- reading an offline W&B run back from disk -------------------------------------------------------
_HEADER = b":W&B\xe1\xbe\x00"
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path):
    """Yield the protobuf ``Record`` messages stored in an offline ``run-*.wandb`` file.

    The file is a 7-byte header followed by a LevelDB-style log: 32 KiB blocks of records, each a
    7-byte header (crc32c, little-endian length, type) and a payload; payloads split across blocks
    are reassembled from FIRST/MIDDLE/LAST pieces.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path} is not a W&B run file (bad header)")
    pos, pending = len(_HEADER), b""
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # the writer is mid-record: stop at what is complete
            break
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            pending = payload
        elif kind == _FIRST:
            pending = payload
            continue
        elif kind == _MIDDLE:
            pending += payload
            continue
        elif kind == _LAST:
            pending += payload
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record


@dataclass
class OfflineRun:
    """One offline W&B run in a run dir's ``wandb/``: its folder, id, history rows and exit code."""

    path: Path  # wandb/offline-run-<time>-<id>
    run_id: str
    history: int
    exit_code: int | None  # None: no exit record, the run never finished (or its file is unreadable)


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The offline W&B runs under ``run_dir/wandb``, oldest first."""
    from google.protobuf.message import DecodeError

    out = []
    for path in sorted(Path(run_dir).glob("wandb/offline-run-*")):
        if not path.is_dir():
            continue
        run_id, history, exit_code = path.name.rsplit("-", 1)[-1], 0, None
        try:
            for rec in read_wandb_records(path / f"run-{run_id}.wandb"):
                which = rec.WhichOneof("record_type")
                history += which == "history"
                if which == "exit":
                    exit_code = rec.exit.exit_code
        except (OSError, ValueError, DecodeError):
            exit_code = None  # missing or damaged: no finished run can be read from it
        out.append(OfflineRun(path, run_id, history, exit_code))
    return out


def remove_killed_runs(run_dir: Path) -> None:
    """Remove the offline runs of ``run_dir`` that never finished: each is a killed attempt's, superseded
    by the attempt now opening its own (``wandb sync`` would upload every one of them as a run)."""
    for run in offline_runs(run_dir):
        if run.exit_code is None:
            shutil.rmtree(run.path, ignore_errors=True)


def repair_wandb_mirror(run_dir: Path, wait_s: float = 60.0) -> bool:
    """Rewrite a finished record's offline W&B run from the record when it is missing or incomplete.

    A record mirrors the W&B run whose id its summary.json holds (``wandb_run_id``). When no run of that
    id under ``wandb/`` has an exit record and one history row per row of metrics.jsonl (a kill came after
    summary.json was written and before the run finished; wandb-core buffers, so such a run holds no
    history either), the runs of that id and the killed ones are removed and the run is written again:
    same id, name, group, tags and config, every metrics.jsonl row at its step, finished with the summary
    (its ``_runtime`` and ``_timestamp`` are the rewrite's). Online runs live on the server and are left
    alone. One process at a time mends a run dir (a lock on it; another one skips it), and returns once
    wandb-core has written the new run's exit record (at most ``wait_s``), so the next one finds it whole.
    Returns whether the run was rewritten."""
    import fcntl

    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY_FILE)
    run_id = summary.get("wandb_run_id") if summary else None
    if not run_id:
        return False
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd closes, or its process dies
        except BlockingIOError:
            return False  # another process is mending it
        except OSError:
            pass  # a file system without locks: mend it unlocked
        return _rewrite_if_incomplete(run_dir, summary, str(run_id), wait_s)
    finally:
        os.close(fd)


def _rewrite_if_incomplete(run_dir: Path, summary: dict[str, Any], run_id: str, wait_s: float) -> bool:
    import yaml

    try:
        rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return False  # no readable record to rewrite it from

    def whole() -> bool:
        mine = [r for r in offline_runs(run_dir) if r.run_id == run_id]
        return len(mine) == 1 and mine[0].exit_code is not None and mine[0].history == len(rows)

    if whole():
        return False
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
        if config["logger"]["wandb"]["mode"] != "offline":
            return False  # an online run lives on the server
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return False
    for run in offline_runs(run_dir):
        if run.run_id == run_id:
            shutil.rmtree(run.path, ignore_errors=True)
    sink = WandbSink(run_dir, config, name=summary.get("name") or config["name"], group=summary.get("group"),
                     trial=summary.get("trial"), run_id=run_id)
    for row in rows:
        sink.log({k: _logged_value(v) for k, v in row.items() if k != "step"}, step=row["step"])
    sink.finish(summary)
    deadline = time.monotonic() + wait_s
    while not whole() and time.monotonic() < deadline:  # finish() returns before wandb-core has written it all
        time.sleep(0.1)
    return True
