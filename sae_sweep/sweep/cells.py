"""A cell of a sweep is identified by its resolved run config, not by its directory.

The key is a hash of the resolved config minus the fields that change how a run is logged or
shown but not what it computes (W&B settings, the progress bar, thread count, the sweep name).
Every run dir of a multirun gets a ``cell.json`` with this key, so a re-run of the same sweep can
tell which cells already finished, however their directories happen to be named. An Optuna trial is
a cell of its own even when it repeats another trial's parameters: its key also hashes the trial's
identity (``trial_cell`` in its trial.json), so every trial keeps its row in the results table.

A run dir belongs to the first cell that records itself there. A run dir's name leaves out fields
(``experiment``, ``data.path``: record.DIRNAME_EXCLUDED_KEYS, conf/config.yaml ``override_dirname.exclude_keys``), so two cells can
be given the same name: the later one runs in ``<name>~<first 8 digits of its key>`` instead
(``own_subdir``), and no record of a cell is ever replaced by another cell's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sae_sweep.record import (
    CELL_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_PREVIOUS_FILE,
    COMPLETED,
    CONFIG_FILE,
    RESULT_NEUTRAL_KEYS,
    SUMMARY_FILE,
    TRIAL_FILE,
    RecordError,
    check_finished,
    read_json,
    remove_checkpoints,
    run_dirs,
    write_json_atomic,
)

log = logging.getLogger(__name__)
# Fields added after sweeps already existed: at their default they are left out of the key, so a sweep
# started before them still resumes.
DEFAULT_WHEN_ABSENT = {"train.batch_seed": None}


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


def resolved_run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run part of a composed config (no ``hydra`` node), resolved to plain Python values."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)
    out = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def cell_key(cfg: DictConfig, trial_cell: str | None = None) -> str:
    """16 hex digits identifying what a run computes (and, for an Optuna trial, which trial it is)."""
    tree = resolved_run_config(cfg)
    for dotted in RESULT_NEUTRAL_KEYS:  # naming, logging, scheduling: not what a run computes
        _drop(tree, dotted)
    for dotted, default in DEFAULT_WHEN_ABSENT.items():
        if OmegaConf.select(cfg, dotted, default=default) == default:
            _drop(tree, dotted)
    if trial_cell is not None:
        tree = {"run": tree, "trial_cell": trial_cell}
    blob = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_cell(run_dir: Path, key: str, overrides: list[str], trial: int | None = None) -> None:
    record = {"cell_key": key, "overrides": overrides, "trial": trial,
              "started_at": time.time(), "host": os.uname().nodename, "pid": os.getpid()}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CELL_FILE, record)  # a kill never leaves half a record


def finished_cells(sweep_dir: Path) -> dict[str, Path]:
    """Cell key -> run dir for every cell whose run completed and whose record is whole
    (record.check_finished); a damaged one is logged in one line and so runs again."""
    done: dict[str, Path] = {}
    for d in run_dirs(sweep_dir):
        cell, summary = read_json(d / CELL_FILE), read_json(d / SUMMARY_FILE)
        if not (cell and summary and summary.get("status") == COMPLETED):
            continue
        try:
            check_finished(d)
        except RecordError as exc:
            log.warning(f"resume: {exc}; the cell runs again")
            continue
        drop_stranded_checkpoints(d)
        done.setdefault(str(cell.get("cell_key")), d)
    return done


def discard_unkept_checkpoints(run_dir: Path) -> bool:
    """Remove a run dir's checkpoints unless its run asked to keep them (``train.keep_checkpoint`` in its
    config.yaml; an unreadable one keeps them rather than guess). Returns whether any were removed."""
    if not any((run_dir / n).exists() for n in (CHECKPOINT_FILE, CHECKPOINT_PREVIOUS_FILE)):
        return False
    try:
        keep = OmegaConf.select(OmegaConf.load(run_dir / CONFIG_FILE), "train.keep_checkpoint", default=False)
    except (OSError, yaml.YAMLError, OmegaConfBaseException):
        return False
    if keep:
        return False
    remove_checkpoints(run_dir)
    return True


def drop_stranded_checkpoints(run_dir: Path) -> bool:
    """Remove the checkpoints of a finished run that did not ask to keep them (``train.keep_checkpoint``):
    a kill between its summary and their removal (run.py) leaves them. Returns whether any were removed."""
    if not discard_unkept_checkpoints(run_dir):
        return False
    log.info(f"resume: removed the leftover checkpoints of finished {run_dir.name}")
    return True


def repair_mirrors(run_dirs: Iterable[Path]) -> int:
    """Rewrite from its record the W&B run of every finished run dir whose run a kill left incomplete
    (sinks.repair_wandb_mirror); logs and returns how many. For run dirs no live job writes to."""
    from sae_sweep.sinks import repair_wandb_mirror

    repaired = [d for d in run_dirs if repair_wandb_mirror(d)]
    if repaired:
        log.info(f"resume: rewrote the unfinished W&B runs of {len(repaired)} finished cells from their records "
                 f"({', '.join(d.name for d in repaired[:3])}{', ...' if len(repaired) > 3 else ''})")
    return len(repaired)


def subdir_override(subdir: str) -> str:
    """``hydra.sweep.subdir=<subdir>`` as an override, quoted (a dir name holds '=', ',' and '~')."""
    # Hydra's quoted strings: a quote, and any backslashes right before a quote or the end, are escaped.
    quoted = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), subdir)
    return f"hydra.sweep.subdir='{quoted}'"


def holds_record(run_dir: Path) -> bool:
    """Whether a run dir already holds some run's record."""
    return any((run_dir / f).exists() for f in (CELL_FILE, SUMMARY_FILE, TRIAL_FILE))


def own_subdir(sweep_dir: Path, subdir: str, key: str) -> str:
    """``subdir`` if it is free or already this cell's, else ``subdir~<key[:8]>`` (then the whole key)."""
    for name in (subdir, f"{subdir}~{key[:8]}", f"{subdir}~{key}"):
        run_dir = Path(sweep_dir) / name
        cell = read_json(run_dir / CELL_FILE)
        if (cell is not None and cell.get("cell_key") == key) or not holds_record(run_dir):
            return name
    raise FileExistsError(f"no free run dir for cell {key} under {sweep_dir}: {subdir}, {subdir}~{key[:8]} "
                          f"and {subdir}~{key} all hold other cells' records")
