"""Refinement of a finished grid: new J between the grid points that bracket each estimate of h, and
one alpha beyond the grid's edge when the best alpha sits on it.

A round reads the sweep dir's ``estimates.json`` and results table, proposes new cells per dataset
(``sae_sweep/analysis/refinement.py``: the rule, pure functions), and runs them through the real CLI into
the same sweep dir. The grid sweeper's resume skips every cell that already finished, and the multirun's
own analysis rewrites ``estimates.json``, which the next round reads.

``refinement.json`` in the sweep dir is the record: the sweep's original overrides (saved the first
time, since every multirun rewrites ``multirun.yaml``) and every round with its commands and the
cells it added. A round is written as ``started`` before anything is launched and ``finished`` after,
so a refine killed at any point and re-run with the same command re-runs that round's recorded
commands (resume makes that free for the cells that finished) instead of proposing a new one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sae_sweep.analysis.refinement import (
    DatasetPlan,
    RefineError,
    plan_round,
    read_estimates,
    read_record,
)
from sae_sweep.kill import kill_point
from sae_sweep.record import ESTIMATES_FILE, MULTIRUN_FILE, OPTUNA_DB
from sae_sweep.record import REFINEMENT_FILE as RECORD_FILE

MAX_ROUNDS = 3
AXES = ("alpha", "dict_size", "seed")

Runner = Callable[[list[str], Path | None], int]


# --- commands ------------------------------------------------------------------------------------
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    s = str(v)
    return s if re.fullmatch(r"[\w./:+-]+", s) else "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _numbers(xs: Sequence[float | int]) -> str:
    return ",".join(repr(float(x)) if isinstance(x, float) else str(int(x)) for x in xs)


def dataset_overrides(task_overrides: Sequence[str], label: dict[str, Any]) -> list[str]:
    """The sweep's own overrides with the axes (alpha, J, seed) and the dataset's fields pinned out,
    then the dataset's fields as single values (``data.h=64``), keeping an original ``+`` prefix."""
    pinned = set(AXES) | set(label)
    prefix = {_key(o): o[: len(o) - len(o.lstrip("+~"))] for o in task_overrides if "=" in o}
    kept = [o for o in task_overrides if _key(o) not in pinned]
    return kept + [f"{prefix.get(k, '')}{k}={_value_text(v)}" for k, v in label.items()]


def round_commands(plans: Sequence[DatasetPlan], task_overrides: Sequence[str], sweep_dir: Path,
                   extra_args: Sequence[str] = (), analysis_overrides: Sequence[str] = (),
                   python: str = sys.executable) -> list[list[str]]:
    """The multiruns of one round: per dataset, the new J at every working alpha, then the new alpha at
    every J. Only the round's last multirun runs the analysis (each one would analyse the whole dir)."""
    cmds: list[list[str]] = []
    for p in plans:
        base = [python, "-m", "sae_sweep", "-m", *dataset_overrides(task_overrides, p.label),
                *analysis_overrides, f"hydra.sweep.dir={Path(sweep_dir).resolve()}"]
        seeds = f"seed={_numbers(p.seeds)}"
        if p.added_dict_sizes:
            cmds.append([*base, f"dict_size={_numbers(p.added_dict_sizes)}",
                         f"alpha={_numbers(p.new_j_alphas)}", seeds])
        if p.added_alphas:
            every_j = sorted({*p.grid_dict_sizes, *p.added_dict_sizes})
            cmds.append([*base, f"alpha={_numbers(p.added_alphas)}", f"dict_size={_numbers(every_j)}", seeds])
    for i, cmd in enumerate(cmds):
        if i < len(cmds) - 1:
            cmd.append("hydra.callbacks.report.enabled=false")
        cmd.extend(extra_args)
    return cmds


def analysis_overrides(settings: dict[str, Any]) -> list[str]:
    """The thresholds of the estimates being refined, where they differ from the defaults, so the
    rounds' own analysis reads the sweep the same way."""
    import dataclasses

    from sae_sweep.analysis.settings import AnalysisSettings

    out = []
    for f in dataclasses.fields(AnalysisSettings):
        v = settings.get(f.name)
        if isinstance(v, int | float) and not isinstance(v, bool) and v != f.default:
            out.append(f"++hydra.callbacks.report.{f.name}={v!r}")
    return out


# --- inputs and the record -----------------------------------------------------------------------
def check_sweep_dir(sweep_dir: Path, rounds: int) -> None:
    """Raise RefineError for input refinement cannot use; reads only."""
    if not 1 <= rounds <= MAX_ROUNDS:
        raise RefineError("--rounds", rounds, f"must be an integer in 1..{MAX_ROUNDS}")
    if not sweep_dir.is_dir():
        raise RefineError("sweep_dir", sweep_dir, "is not a directory")
    multirun = sweep_dir / MULTIRUN_FILE
    trials = sorted(p.name for p in sweep_dir.glob("trial_*") if p.is_dir())
    if (sweep_dir / OPTUNA_DB).exists():
        trials.insert(0, OPTUNA_DB)
    if multirun.exists() and "optuna" in _sweeper_target(multirun).lower():
        trials.append(MULTIRUN_FILE)
    if trials:
        raise RefineError("sweep_dir", sweep_dir, f"is an Optuna study ({trials[0]}); refinement needs a grid sweep")
    read_estimates(sweep_dir)
    if not (sweep_dir / RECORD_FILE).exists() and not multirun.exists():
        raise RefineError(MULTIRUN_FILE, multirun, "is missing; it holds the sweep's overrides (written by Hydra)")


def _sweeper_target(multirun: Path) -> str:
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.select(OmegaConf.load(multirun), "hydra.sweeper._target_", default="") or "")
    except Exception:  # an unreadable multirun.yaml is reported where its overrides are read
        return ""


def read_sweep_overrides(sweep_dir: Path) -> tuple[list[str], str | None]:
    """(hydra.overrides.task, hydra.runtime.cwd) of the sweep's multirun.yaml."""
    from omegaconf import OmegaConf

    path = sweep_dir / MULTIRUN_FILE
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # any YAML or I/O error: one line naming the file
        raise RefineError(MULTIRUN_FILE, path, f"must be Hydra's multirun record ({type(exc).__name__})") from None
    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if task is None:
        raise RefineError(MULTIRUN_FILE, path, "must list hydra.overrides.task")
    cwd = OmegaConf.select(cfg, "hydra.runtime.cwd", default=None)
    return [str(t) for t in task], None if cwd is None else str(cwd)


def write_record(sweep_dir: Path, record: dict[str, Any]) -> None:
    path = Path(sweep_dir) / RECORD_FILE
    tmp = path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # atomic: a kill leaves the old record or the new one, never half


# --- running -------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def run_command(cmd: list[str], cwd: Path | None) -> int:
    return subprocess.run(cmd, cwd=cwd).returncode


def _describe(rnd: dict[str, Any]) -> str:
    lines = []
    for d in rnd["datasets"]:
        said = ", ".join(f"{k} {v:g}" for k, v in d["estimates"].items() if v is not None) or "no estimate"
        if d["best_alpha"] is not None:
            said += f"; best alpha {d['best_alpha']:g}"
        lines.append(f"  {d['dataset']}: J grid {d['grid_dict_sizes']}, alphas {d['grid_alphas']} ({said}) -> "
                     f"new J {d['added_dict_sizes']}, new alpha {d['added_alphas']}")
    return "\n".join(lines)


def _run_round(sweep_dir: Path, record: dict[str, Any], rnd: dict[str, Any], runner: Runner,
               log: Callable[[str], None]) -> int:
    """Launch a recorded (started) round's commands and mark it finished; the exit code of the first failure."""
    cwd = Path(record["cwd"]) if record.get("cwd") and Path(record["cwd"]).is_dir() else None
    codes = []
    for cmd in rnd["commands"]:
        log(shlex.join(cmd))
        codes.append(runner(cmd, cwd))
        kill_point("refine_after_command")
        if codes[-1] != 0:
            break
    rnd["returncodes"] = codes
    failed = [c for c in codes if c != 0]
    if not failed:
        rnd["status"], rnd["finished_at"] = "finished", _now()
    write_record(sweep_dir, record)
    return failed[0] if failed else 0


def refine(sweep_dir: Path, rounds: int = 1, extra_args: Sequence[str] = (), dry_run: bool = False,
           runner: Runner = run_command, log: Callable[[str], None] = print) -> int:
    """Refine ``sweep_dir`` until ``rounds`` rounds are recorded in refinement.json (or nothing new is
    proposed). A round left ``started`` by a killed refine is completed first. Returns an exit code."""
    sweep_dir = Path(sweep_dir)
    check_sweep_dir(sweep_dir, rounds)
    record = read_record(sweep_dir)
    if record is None:
        task, cwd = read_sweep_overrides(sweep_dir)
        record = {"version": 1, "task_overrides": task, "cwd": cwd, "rounds": []}
    while True:
        pending = next((r for r in record["rounds"] if r.get("status") != "finished"), None)
        if pending is None:
            done = len(record["rounds"])
            if done >= rounds:
                log(f"refine: {done} round{'s' * (done != 1)} recorded in {sweep_dir / RECORD_FILE}; "
                    f"--rounds {rounds} asks for no more")
                return 0
            from sae_sweep.analysis.sweep_data import load_cells

            estimates = read_estimates(sweep_dir)
            cells = load_cells(sweep_dir)
            if cells.empty:
                raise RefineError("sweep_dir", sweep_dir, "holds no completed cells to refine")
            extended = {d["dataset"] for r in record["rounds"] for d in r.get("datasets", []) if d.get("added_alphas")}
            plans = [p for p in plan_round(estimates, cells, extended) if not p.empty]
            if not plans:
                log(f"refine: round {done + 1}: nothing new to propose (no estimate, or its midpoints are on the grid already)")
                return 0
            extras = list(extra_args)
            pending = {"round": done + 1, "status": "started", "started_at": _now(), "finished_at": None,
                       "extra_args": extras, "datasets": [asdict(p) for p in plans],
                       "commands": round_commands(plans, record["task_overrides"], sweep_dir, extras,
                                                  analysis_overrides(estimates.get("settings") or {})),
                       "returncodes": []}
            log(f"refine: round {pending['round']}:\n{_describe(pending)}")
            if dry_run:
                log("\n".join(shlex.join(c) for c in pending["commands"]))
                return 0
            record["rounds"].append(pending)
            write_record(sweep_dir, record)
            kill_point("refine_after_record")
        else:
            log(f"refine: round {pending['round']} was started but not finished; running its commands again")
            if dry_run:
                log("\n".join(shlex.join(c) for c in pending["commands"]))
                return 0
        before = _signature(sweep_dir / ESTIMATES_FILE)
        code = _run_round(sweep_dir, record, pending, runner, log)
        if code != 0:
            print(f"sae_sweep.refine: error: round {pending['round']} exit code {code}: re-run the same "
                  f"refine command to retry it", file=sys.stderr)
            return 1
        if _signature(sweep_dir / ESTIMATES_FILE) == before:
            log(f"refine: round {pending['round']} did not rewrite {ESTIMATES_FILE} (analysis disabled or "
                f"failed?); run python -m sae_sweep.analyze {sweep_dir}, then refine again")
            return 0
