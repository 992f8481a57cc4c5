"""Kill sweeps at random moments and re-run them: is any cell lost, duplicated, retrained or stranded?

    .venv/bin/python benchmarks/bench_faults.py                        # 5 kills per kind, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_faults.py --kills 10 --seed 1 --kinds grid optuna
    .venv/bin/python benchmarks/bench_faults.py --kills 2 --samples 80000 --out /tmp/faults   # the slow test's run
    .venv/bin/python benchmarks/bench_faults.py --wandb --kinds optuna   # W&B offline on: one finished W&B run per cell

Three kinds of sweep, each the real CLI (``python -m sae_sweep -m``) in a subprocess on a tiny toy
problem, 8 cells (alpha 0.1, 0.3 x J 16, 32 x seed 0, 1), checkpoints every eighth of a run:
- ``grid``: the grid sweeper, the basic launcher (job after job in the process);
- ``packed``: the grid sweeper, ``hydra/launcher=packed`` (the 8 cells as one pack);
- ``optuna``: ``hydra/sweeper=sae_optuna`` with the grid sampler (each point once), SQLite storage,
  two trials per batch.

Each kind first runs once uninterrupted (``clean``: its wall time sets the kill delays, and its audit
checks the auditor). Then the same command runs in a second sweep dir and is killed ``--kills`` times
(SIGKILL to the whole process group after a delay drawn uniformly between 0 and the time the rest of
the sweep should take, from a seeded RNG), then run until it ends unkilled; a run that ends before its
kill has finished its sweep, and the next kills go to a fresh sweep dir. The records on disk are then
audited (exit codes are not trusted); each count is of subjects (cells, trials, files):
- lost: a cell with no complete record (summary.json ``completed`` whose file digests hold,
  record.check_finished) or without a completed row in runs.parquet; for Optuna, a grid point with no
  COMPLETE trial;
- duplicated: a cell with more than one run dir (grid, packed) or complete record, more than one row in
  runs.parquet, or (Optuna) more than one COMPLETE trial of one grid point;
- retrained: a cell complete after some kill whose run dirs changed afterwards (a summary.json or
  cell.json rewritten, or a new run dir of its key);
- stranded: Optuna trials left RUNNING or WAITING, temporary files (``*.tmp``, SQLite journals),
  checkpoints of cells that completed, entries of the sweep dir that are no cell's run dir;
- inconsistent: a table row, a summary or (Optuna) a trial value that disagrees with the others.
Target: every count 0. The script exits 1 when one is not, and writes the counts and every finding to
``faults.json`` in the output dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sae_sweep.record import (  # noqa: E402
    CELL_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_PREVIOUS_FILE,
    COMPLETED,
    MULTIRUN_FILE,
    OPTUNA_DB,
    PROGRESS_FILE,
    PROGRESS_LOCK,
    RESULTS_CSV,
    RESULTS_FILE,
    SUMMARY_FILE,
    RecordError,
    check_finished,
    file_digest,
    read_json,
)

COUNTS = ("lost", "duplicated", "retrained", "stranded", "inconsistent")
KINDS = ("grid", "packed", "optuna")
AXES: dict[str, tuple[Any, ...]] = {"alpha": (0.1, 0.3), "dict_size": (16, 32), "seed": (0, 1)}
# What a sweep dir holds besides its run dirs once a sweep has ended (the report is off).
SWEEP_FILES = {MULTIRUN_FILE, RESULTS_FILE, RESULTS_CSV, PROGRESS_FILE, PROGRESS_LOCK}
OPTUNA_FILES = SWEEP_FILES | {OPTUNA_DB}
Cell = tuple[tuple[str, Any], ...]  # (("alpha", 0.1), ("dict_size", 16), ("seed", 0))
Findings = dict[str, dict[str, list[str]]]  # count -> subject (a cell, a trial, a file) -> details


def tiny(samples: int, wandb: bool = False) -> list[str]:
    """Seconds-long runs on one thread, a checkpoint every eighth of a run, no report; W&B offline or off."""
    return ["experiment=smoke", "data.n=16", "data.h=32", "data.mean_active=3", "train.batch_size=128",
            f"train.num_samples={samples}", f"train.eval_every={samples // 4}",
            f"train.checkpoint_every={samples // 8}", "data.eval_size=512", "train.threads=1",
            "train.progress=false", f"logger.wandb.mode={'offline' if wandb else 'disabled'}", "hydra.callbacks.report.enabled=false"]


def sweep_args(kind: str) -> list[str]:
    if kind == "optuna":
        return ["hydra/sweeper=sae_optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null",
                "hydra.sweeper.n_jobs=2",
                *(f"{k}=choice({','.join(map(str, v))})" for k, v in AXES.items())]
    launcher = ["hydra/launcher=packed"] if kind == "packed" else []
    return [*launcher, *(f"{k}={','.join(map(str, v))}" for k, v in AXES.items())]


def all_cells() -> list[Cell]:
    cells: list[Cell] = [()]
    for key, values in AXES.items():
        cells = [(*c, (key, v)) for c in cells for v in values]
    return cells


def cell_of(overrides: list[str]) -> Cell | None:
    """The cell a run dir's cell.json overrides name (the swept axes, typed), None if not all of them."""
    found: dict[str, Any] = {}
    for o in overrides:
        key, _, text = o.partition("=")
        if key in AXES:
            found[key] = yaml.safe_load(text)
    return tuple((k, found[k]) for k in AXES) if set(found) == set(AXES) else None


def show(cell: Cell | None) -> str:
    return " ".join(f"{k}={v}" for k, v in cell) if cell else "(no cell)"


def _sha(path: Path) -> str | None:
    return file_digest(path) if path.is_file() else None


def complete(run_dir: Path) -> dict[str, Any] | None:
    """The run dir's summary when its record is complete and whole, else None."""
    try:
        return check_finished(run_dir)
    except RecordError:
        return None


def subdirs(sweep_dir: Path) -> list[Path]:
    """The sweep dir's dirs (none before a first run has made it)."""
    return sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()) if Path(sweep_dir).is_dir() else []


def run_dirs_by_key(sweep_dir: Path) -> dict[str, list[Path]]:
    """Cell key -> the run dirs whose cell.json holds it."""
    out: dict[str, list[Path]] = {}
    for d in subdirs(sweep_dir):
        cell = read_json(d / CELL_FILE)
        if cell and cell.get("cell_key"):
            out.setdefault(str(cell["cell_key"]), []).append(d)
    return out


def fingerprints(sweep_dir: Path) -> dict[str, tuple]:
    """Cell key -> what its run dirs hold, for every key with a complete record: after that, nothing of
    the cell may change (a rewritten summary or cell.json, a new run dir of the key: it trained again)."""
    out = {}
    for key, dirs in run_dirs_by_key(sweep_dir).items():
        if any(complete(d) is not None for d in dirs):
            out[key] = tuple((d.name, _sha(d / CELL_FILE), _sha(d / SUMMARY_FILE),
                              (d / SUMMARY_FILE).stat().st_mtime_ns if (d / SUMMARY_FILE).exists() else None)
                             for d in dirs)
    return out


def remember(seen: dict[str, tuple], sweep_dir: Path) -> None:
    """Add the complete cells' fingerprints to ``seen`` (the first one of each key is kept)."""
    for key, fp in fingerprints(sweep_dir).items():
        seen.setdefault(key, fp)


def note(f: Findings, what: str, subject: str, detail: str) -> None:
    """Record a finding: ``what`` (one of COUNTS) about ``subject`` (a cell, a trial, a file)."""
    f[what].setdefault(subject, []).append(detail)


def new_findings() -> Findings:
    return {k: {} for k in COUNTS}


def retrained(seen: dict[str, tuple], sweep_dir: Path, f: Findings) -> None:
    now = fingerprints(sweep_dir)
    cells = {key: show(cell_of(list((read_json(d / CELL_FILE) or {}).get("overrides") or [])))
             for key, dirs in run_dirs_by_key(sweep_dir).items() for d in dirs[:1]}
    for key in sorted(seen):
        if now.get(key) != seen[key]:
            note(f, "retrained", cells.get(key, f"cell {key}"),
                 f"its run dirs changed after it completed: {seen[key]} -> {now.get(key)}")


def leftovers(sweep_dir: Path, allowed: set[str], cell_dirs: dict[Path, Cell | None], finished_keys: set[str],
              f: Findings) -> None:
    """Temporary files anywhere, checkpoints of finished cells, and sweep-dir entries that are no
    expected cell's run dir nor a file a sweep dir holds."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return
    for p in sorted(sweep_dir.rglob("*")):
        if p.is_file() and p.name.endswith((".tmp", "-journal", "-wal", "-shm")):
            note(f, "stranded", str(p.relative_to(sweep_dir)), "temporary file")
    for p in sorted(sweep_dir.iterdir()):
        if p.is_dir():
            if cell_dirs.get(p) is None:
                note(f, "stranded", p.name, "a dir that belongs to no cell of the sweep")
            cell = read_json(p / CELL_FILE) or {}
            for name in (CHECKPOINT_FILE, CHECKPOINT_PREVIOUS_FILE):
                if str(cell.get("cell_key")) in finished_keys and (p / name).exists():
                    note(f, "stranded", f"{p.name}/{name}", "checkpoint of a finished cell")
        elif p.name not in allowed and not p.name.endswith(".tmp"):
            note(f, "stranded", p.name, "a file a sweep dir does not hold")


def _table(sweep_dir: Path) -> list[dict[str, Any]] | None:
    import pandas as pd

    path = Path(sweep_dir) / RESULTS_FILE
    if not path.exists():
        return None
    return pd.read_parquet(path).to_dict("records")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _cell_dirs(sweep_dir: Path) -> dict[Path, Cell | None]:
    out = {}
    for d in subdirs(sweep_dir):
        cell = read_json(d / CELL_FILE)
        out[d] = cell_of(list(cell.get("overrides") or [])) if cell else None
    return out


def _key(run_dir: Path) -> str:
    return str((read_json(run_dir / CELL_FILE) or {}).get("cell_key"))


def audit_table(sweep_dir: Path, cells: list[Cell], cell_dirs: dict[Path, Cell | None], f: Findings) -> None:
    """runs.parquet against the run dirs: one completed row per cell, its values those of its summary."""
    rows = _table(sweep_dir)
    if rows is None:
        for c in cells:
            note(f, "lost", show(c), f"no {RESULTS_FILE}")
        return
    by_cell: dict[Cell | None, list[dict[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault(cell_dirs.get(Path(sweep_dir) / str(row["run"])), []).append(row)
    for cell in cells:
        got = by_cell.get(cell, [])
        if not any(r["status"] == COMPLETED for r in got):
            note(f, "lost", show(cell), f"no completed row in {RESULTS_FILE} (rows: {[r['status'] for r in got]})")
        if len(got) > 1:
            note(f, "duplicated", show(cell), f"{len(got)} rows in {RESULTS_FILE}")
    for row in by_cell.get(None, []):
        note(f, "duplicated", f"row {row['run']}", f"a row of {RESULTS_FILE} that is no cell of the sweep")
    for row in rows:
        summary = read_json(Path(sweep_dir) / str(row["run"]) / SUMMARY_FILE) or {}
        for k in ("status", "mmcs", "samples"):
            if k in summary and not _same(summary[k], row.get(k)):
                note(f, "inconsistent", f"row {row['run']}", f"{k} {row.get(k)!r}, its summary.json {summary[k]!r}")


def audit_grid(sweep_dir: Path, seen: dict[str, tuple]) -> Findings:
    """What a grid or packed sweep's dir shows once its last run ended (``seen``: the fingerprints of the
    cells complete after each kill)."""
    f = new_findings()
    sweep_dir, cells = Path(sweep_dir), all_cells()
    cell_dirs = _cell_dirs(sweep_dir)
    finished: set[str] = set()
    for cell in cells:
        dirs = [d for d, c in cell_dirs.items() if c == cell]
        done = [d for d in dirs if complete(d) is not None]
        if not done:
            note(f, "lost", show(cell), f"no complete record ({len(dirs)} run dirs)")
        if len(dirs) > 1:  # a resumed cell runs in its own dir again
            note(f, "duplicated", show(cell), f"{len(dirs)} run dirs ({', '.join(d.name for d in dirs)})")
        if len({_key(d) for d in dirs}) > 1:
            note(f, "inconsistent", show(cell), f"{len({_key(d) for d in dirs})} cell keys")
        finished |= {_key(d) for d in done}
    audit_table(sweep_dir, cells, cell_dirs, f)
    retrained(seen, sweep_dir, f)
    leftovers(sweep_dir, SWEEP_FILES, cell_dirs, finished, f)
    return f


def audit_optuna(sweep_dir: Path, seen: dict[str, tuple], study_name: str = "smoke") -> Findings:
    """As audit_grid, for a grid-sampler Optuna study in ``sweep_dir/optuna.db``: every grid point one
    COMPLETE trial, its value that of its run dir's summary and of its row in runs.parquet. A killed
    trial's retry runs in a run dir of its own, so a cell may have several run dirs, one complete."""
    import optuna
    from optuna.trial import TrialState

    from sae_sweep.sweep.liveness import counted
    from sae_sweep.sweep.storage import open_storage, storage_spec

    f = new_findings()
    sweep_dir, cells = Path(sweep_dir), all_cells()
    cell_dirs = _cell_dirs(sweep_dir)
    if not (sweep_dir / OPTUNA_DB).is_file():
        for cell in cells:
            note(f, "lost", show(cell), f"no {OPTUNA_DB}")
        return f
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study_name,
                               storage=open_storage(storage_spec(None, sweep_dir))).get_trials(deepcopy=False)
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            note(f, "stranded", f"trial {t.number}", f"left {t.state.name}")
    complete_trials: dict[Cell, list[Any]] = {}
    for t in counted(trials):
        if t.state == TrialState.COMPLETE:
            complete_trials.setdefault(tuple((k, t.params.get(k)) for k in AXES), []).append(t)
        elif t.state.is_finished():  # failed or pruned, yet not superseded by a retry
            note(f, "lost", f"trial {t.number}", f"{t.state.name}, counted toward n_trials")
    rows = {str(r["run"]): r for r in (_table(sweep_dir) or [])}
    finished: set[str] = set()
    for cell in cells:
        got = complete_trials.get(cell, [])
        if not got:
            note(f, "lost", show(cell), "no COMPLETE trial")
        if len(got) > 1:
            note(f, "duplicated", show(cell), f"COMPLETE trials {[t.number for t in got]}")
        done = [d for d, c in cell_dirs.items() if c == cell and complete(d) is not None]
        if len(done) > 1:
            note(f, "duplicated", show(cell), f"{len(done)} complete run dirs ({', '.join(d.name for d in done)})")
        finished |= {_key(d) for d in done}
        for t in got:
            run_dir = Path(str(t.user_attrs.get("run_dir")))
            summary = complete(run_dir)
            if summary is None:
                note(f, "lost", show(cell), f"trial {t.number}: no complete record in {run_dir.name}")
                continue
            if not _same(summary.get("mmcs"), t.value):
                note(f, "inconsistent", f"trial {t.number}", f"value {t.value}, its summary.json {summary.get('mmcs')}")
            row = rows.get(run_dir.name)
            if row is not None and not _same(row.get("mmcs"), t.value):
                note(f, "inconsistent", f"trial {t.number}", f"value {t.value}, its row {row.get('mmcs')}")
    audit_table(sweep_dir, cells, cell_dirs, f)
    retrained(seen, sweep_dir, f)
    leftovers(sweep_dir, OPTUNA_FILES, cell_dirs, finished, f)
    return f


def audit_wandb(sweep_dir: Path, f: Findings) -> None:
    """Every complete run dir holds exactly one finished offline W&B run, whose history has one row per
    metrics.jsonl row, and no unfinished one (a killed attempt's)."""
    from sae_sweep.sinks import offline_runs

    for d in subdirs(sweep_dir):
        if complete(d) is None:
            continue
        runs = offline_runs(d)
        finished = [r for r in runs if r.exit_code is not None]
        if len(finished) != 1:
            note(f, "lost" if not finished else "duplicated", f"{d.name} W&B", f"{len(finished)} finished W&B runs")
        for r in runs:
            if r.exit_code is None:
                note(f, "stranded", f"{d.name}/wandb/{r.path.name}", "an unfinished W&B run in a complete cell")
        n_rows = len((d / "metrics.jsonl").read_text().splitlines()) if (d / "metrics.jsonl").is_file() else 0
        for r in finished:
            if r.history != n_rows:
                note(f, "inconsistent", f"{d.name} W&B", f"{r.history} history rows, metrics.jsonl {n_rows}")


def audit(kind: str, sweep_dir: Path, seen: dict[str, tuple], wandb: bool = False) -> Findings:
    f = audit_optuna(sweep_dir, seen) if kind == "optuna" else audit_grid(sweep_dir, seen)
    if wandb:
        audit_wandb(sweep_dir, f)
    return f


# --- running and killing ------------------------------------------------------------------------


def env() -> dict[str, str]:
    e = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("WANDB_MODE", "WANDB_SERVICE", "SAE_SWEEP_KILL_AT"):
        e.pop(var, None)
    return e


def command(kind: str, sweep_dir: Path, samples: int, wandb: bool = False) -> list[str]:
    return [sys.executable, "-m", "sae_sweep", "-m", *tiny(samples, wandb), *sweep_args(kind),
            f"hydra.sweep.dir={sweep_dir}"]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group and wait until none of it is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"process group {proc.pid} still alive 30 s after SIGKILL")


def run_once(cmd: list[str], cwd: Path, log: Path, delay: float | None) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group; kill it after ``delay`` s. (exit code or None if killed, wall s)."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
    return rc, time.monotonic() - t0


def n_complete(sweep_dir: Path) -> int:
    return sum(complete(d) is not None for d in subdirs(sweep_dir))


def bench_kind(kind: str, kills: int, seed: int, out: Path, samples: int, wandb: bool = False) -> dict[str, Any]:
    """One uninterrupted sweep, then sweeps killed and re-run until ``kills`` kills have landed: a run
    that ends before its kill completes its sweep, and the next kills go to a fresh sweep dir."""
    rng = random.Random(f"{seed}:{kind}")
    root = out / kind
    (root / "logs").mkdir(parents=True, exist_ok=True)
    clean = root / "clean"
    started = time.time()
    clean_rc, clean_wall = run_once(command(kind, clean, samples, wandb), root, root / "logs" / "clean.log", None)
    first = min((read_json(p) or {}).get("started_at", math.inf) for p in clean.glob(f"*/{CELL_FILE}"))
    startup = min(max(first - started, 0.0), clean_wall)  # start-up and composing, before the first job
    clean_findings = audit(kind, clean, {}, wandb)
    total = len(all_cells())
    findings = new_findings()
    delays: list[float] = []
    wall, final_rcs, sweeps = 0.0, [], 0
    while (len(delays) < kills or sweeps == 0) and sweeps < kills + 3:
        sweep_dir, seen, rc = root / f"killed{sweeps}", {}, None
        for attempt in range(kills + 20):
            delay = None
            if len(delays) < kills:  # uniform over the time the rest of the sweep should take
                left = total - min(n_complete(sweep_dir), total)
                delay = rng.uniform(0.0, startup + (clean_wall - startup) * max(left, 1) / total)
            log = root / "logs" / f"{sweep_dir.name}-run{attempt:02d}.log"
            rc, took = run_once(command(kind, sweep_dir, samples, wandb), root, log, delay)
            wall += took
            remember(seen, sweep_dir)  # after every kill: the cells complete so far must never change
            if rc is not None:
                break
            delays.append(delay)  # type: ignore[arg-type]
        final_rcs.append(rc)
        for what, subjects in audit(kind, sweep_dir, seen, wandb).items():
            findings[what].update({f"{sweep_dir.name}/{subject}": d for subject, d in subjects.items()})
        sweeps += 1
    return {"kind": kind, "kills": len(delays), "sweeps": sweeps, "delays_s": [round(d, 2) for d in delays],
            "final_rcs": final_rcs, "clean_rc": clean_rc, "clean_wall_s": clean_wall, "wall_s": wall,
            "startup_s": startup, "counts": {k: len(v) for k, v in findings.items()}, "findings": findings,
            "clean_counts": {k: len(v) for k, v in clean_findings.items()}, "clean_findings": clean_findings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=5, help="kills per kind before the run that may finish")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--samples", type=int, default=400_000, help="training samples per run")
    ap.add_argument("--wandb", action="store_true", help="W&B offline on; audit one finished W&B run per cell")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default: a new temporary dir)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_faults_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench_faults: {args.kills} kills per kind, seed {args.seed}, {args.samples} samples per run, "
          f"W&B {'offline' if args.wandb else 'off'}, "
          f"load average {os.getloadavg()[0]:.2f}; sweeps in {out}", flush=True)
    t0 = time.monotonic()
    results = []
    for kind in args.kinds:
        results.append(bench_kind(kind, args.kills, args.seed, out.resolve(), args.samples, args.wandb))
        r = results[-1]
        print(f"  {kind}: {r['kills']} kills at {r['delays_s']} s in {r['sweeps']} sweep(s), last runs exited "
              f"{r['final_rcs']}, {r['wall_s']:.1f} s (uninterrupted {r['clean_wall_s']:.1f} s)", flush=True)
    (out / "faults.json").write_text(json.dumps(results, indent=2))
    head = f"| sweep | kills | sweeps | last exit | {' | '.join(COUNTS)} | wall s | / uninterrupted |"
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    for r in results:
        ratio = r["wall_s"] / (r["clean_wall_s"] * r["sweeps"]) if r["clean_wall_s"] else math.nan
        print(f"| {r['kind']}, killed | {r['kills']} | {r['sweeps']} | {','.join(map(str, r['final_rcs']))} | "
              + " | ".join(str(r["counts"][k]) for k in COUNTS) + f" | {r['wall_s']:.1f} | {ratio:.2f} |")
        print(f"| {r['kind']}, uninterrupted | 0 | 1 | {r['clean_rc']} | "
              + " | ".join(str(r["clean_counts"][k]) for k in COUNTS) + f" | {r['clean_wall_s']:.1f} | 1.00 |")
    bad = False
    for r in results:
        for label, findings, rcs in (("killed", r["findings"], r["final_rcs"]),
                                     ("uninterrupted", r["clean_findings"], [r["clean_rc"]])):
            if any(rc != 0 for rc in rcs):
                print(f"{r['kind']} ({label}): a last run exited {rcs} (logs in {out / r['kind'] / 'logs'})")
                bad = True
            for what, subjects in findings.items():
                for subject, details in subjects.items():
                    print(f"{r['kind']} ({label}) {what}: {subject}: {'; '.join(details)}")
                    bad = True
    print(f"\ntotal {time.monotonic() - t0:.0f} s; target: every count 0 and every last run exit 0: "
          f"{'MISSED' if bad else 'met'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
