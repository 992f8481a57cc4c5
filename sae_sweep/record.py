"""The run record on disk: file names, statuses, checked reads and atomic writes. Torch-free, Hydra-free.

Every layer that reads or writes a run dir or a sweep dir takes the names from here (the trainer,
the sweepers, the results table, the analysis, the scripts), so a file is renamed in one place.

A run dir's record is complete when ``summary.json`` exists; it is written last and atomically, and it
lists the SHA-256 of every other file the run wrote (``files``), so a finished cell whose weights,
latent statistics or ground truth were changed or damaged afterwards is told apart from a good one
(resume trains it again; the results table marks it ``corrupt`` and the analysis skips it). Every
reader here raises :class:`RecordError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# --- a run dir ---------------------------------------------------------------------------------
SUMMARY_FILE = "summary.json"  # written last: final metrics, status, timings, file digests
CONFIG_FILE = "config.yaml"  # the resolved run config
HYDRA_CONFIG_FILE = ".hydra/config.yaml"  # Hydra's record of the composed config (multirun jobs)
METRICS_FILE = "metrics.jsonl"  # one row per evaluation
WEIGHTS_FILE = "sae.safetensors"
SAE_CFG_FILE = "cfg.json"
LATENTS_FILE = "latents.safetensors"
GROUND_TRUTH_FILE = "ground_truth.safetensors"
CELL_FILE = "cell.json"  # which cell of a sweep the run is (sweep/cells.py)
TRIAL_FILE = "trial.json"  # left by the Optuna sweeper: how the job reaches its trial
CHECKPOINT_FILE = "checkpoint.safetensors"  # the last checkpoint inside a run (checkpoint.py); gone once it ends
CHECKPOINT_PREVIOUS_FILE = "checkpoint.prev.safetensors"  # the one before: a pack killed mid-round resumes from it
# --- a sweep dir -------------------------------------------------------------------------------
RESULTS_FILE = "runs.parquet"  # the results table, one row per cell (table.py)
RESULTS_CSV = "runs.csv"  # the same table as CSV
PROGRESS_FILE = "progress.json"  # cells this invocation launches and when it began (sweep/progress.py)
PROGRESS_LOCK = ".progress.lock"  # the last count a progress line printed, under flock (sweep/progress.py)
MULTIRUN_FILE = "multirun.yaml"  # the sweep's composed config, as the sweepers save it
OPTUNA_DB = "optuna.db"  # an Optuna study's default storage (sweep/storage.py)
REPORT_FILE = "report.md"  # the analysis (analysis/report.py)
ESTIMATES_FILE = "estimates.json"  # the analysis's estimates, machine-readable; refinement reads them
REFINEMENT_FILE = "refinement.json"  # the refinement rounds (sweep/refine.py)

# --- statuses ----------------------------------------------------------------------------------
# What a run can end in (summary.json ``status``); "completed" is the only success.
COMPLETED, DIVERGED, PRUNED, INTERRUPTED, FAILED = "completed", "diverged", "pruned", "interrupted", "failed"
# The results table's own statuses: a completed cell whose record fails check_finished, and a run
# dir with no summary.json (still running, or killed before it wrote one).
CORRUPT, INCOMPLETE = "corrupt", "incomplete"

# --- fields that do not change a run's result --------------------------------------------------
# Dotted config paths. How a run is named and logged (the members of one pack may differ in them) ...
LOGGING_KEYS = ("name", "logger", "train.progress")
# ... and how it is scheduled (threads, lanes, sparse_below and stacked change only its speed; one pack
# shares them).
SCHEDULING_KEYS = ("train.threads", "train.lanes", "train.sparse_below", "train.stacked")
# ... and whether and how often it checkpoints (a resumed run ends as the uninterrupted one).
CHECKPOINT_KEYS = ("train.checkpoint_every", "train.keep_checkpoint")
# Left out of a cell's key (sweep/cells.py) and of the results table's config columns (table.py).
RESULT_NEUTRAL_KEYS = LOGGING_KEYS + SCHEDULING_KEYS + CHECKPOINT_KEYS
# Override keys left out of a run dir's name: Hydra's ``hydra.job.config.override_dirname.exclude_keys``
# in conf/config.yaml, which must stay literal YAML (tests/unit/test_record.py checks it equals this). The
# result-neutral fields (of the logger only its mode: a W&B project or group set on the command line
# names the dir), the recipe (``experiment``) and a data path (its slashes would nest run dirs).
DIRNAME_EXCLUDED_KEYS = ("name", "experiment", "logger.wandb.mode",
                         *(k for k in RESULT_NEUTRAL_KEYS if k not in ("name", "logger")), "data.path")
# Largest dictionary or input dimension a record may claim (SAE.load checks before allocating anything).
MAX_DIM = 1 << 24


class RecordError(ValueError):
    """A file of a run record is missing, unreadable or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path, self.what = Path(path), what


def single_line(text: object) -> str:
    """``text`` (an exception's message, say) on one line: every run of whitespace becomes one space."""
    return " ".join(str(text).split())


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to ``path`` so that a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def remove_checkpoints(run_dir: Path) -> None:
    """Remove a run dir's checkpoints and the temp files a killed checkpoint write left (checkpoint.py)."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT_FILE, CHECKPOINT_PREVIOUS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for tmp in run_dir.glob(f".{CHECKPOINT_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when missing or truncated (a run killed mid-write).

    The lenient reader, for files a sweep may find half-written; :func:`load_json_object` raises instead."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Run dirs under a sweep dir: those holding a cell.json, one or two levels down."""
    sweep_dir = Path(sweep_dir)
    found = list(sweep_dir.glob(f"*/{CELL_FILE}")) + list(sweep_dir.glob(f"*/*/{CELL_FILE}"))
    return sorted(p.parent for p in found)


def load_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecordError(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(path, f"not readable JSON ({single_line(exc)})") from None
    if not isinstance(value, dict):
        raise RecordError(path, f"must hold a JSON object, got {type(value).__name__}")
    return value


def tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors file's header, checked against the file's size."""
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(size - 8, 100 << 20):
                raise RecordError(path, "not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise RecordError(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(path, f"not a safetensors file ({single_line(exc)})") from None
    if not isinstance(header, dict):
        raise RecordError(path, "not a safetensors file (header is not an object)")
    out, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (_, hi) = str(info["dtype"]), tuple(int(d) for d in info["shape"]), info["data_offsets"]
            end = max(end, int(hi))
        except (KeyError, TypeError, ValueError):
            raise RecordError(path, f"not a safetensors file (bad entry for {name!r})") from None
        out[name] = (dtype, shape)
    if 8 + n + end != size:
        raise RecordError(path, f"truncated or padded: header says {8 + n + end} bytes, the file has {size}")
    return out


def read_tensors(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays, finite, with the ``expected`` shapes."""
    from safetensors.numpy import load_file

    header = tensor_header(path)
    for name, shape in (expected or {}).items():
        if name not in header:
            raise RecordError(path, f"has no tensor {name!r} (it holds {', '.join(header) or 'none'})")
        if header[name][1] != tuple(shape):
            raise RecordError(path, f"{name} has shape {list(header[name][1])}, expected {list(shape)}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a damaged body
        raise RecordError(path, f"not readable ({type(exc).__name__}: {single_line(exc)})") from None
    for name, t in tensors.items():
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise RecordError(path, f"{name} holds NaN or inf")
    return tensors


def _dims(summary: dict[str, Any], path: Path) -> tuple[int, int]:
    j, n = summary.get("dict_size"), summary.get("n")
    if not all(isinstance(v, int) and 1 <= v <= MAX_DIM for v in (j, n)):
        raise RecordError(path, f"dict_size and n must be integers in [1, {MAX_DIM}], got {j!r} and {n!r}")
    return j, n  # type: ignore[return-value]


def check_finished(run_dir: Path) -> dict[str, Any]:
    """The summary of a completed run whose record is whole; RecordError names the first broken file.

    A summary that lists file digests (every run since they were recorded) is checked against them;
    an older one has its weights and latent statistics parsed and checked for shape."""
    run_dir = Path(run_dir)
    summary = load_json_object(run_dir / SUMMARY_FILE)
    if summary.get("status") != COMPLETED:
        raise RecordError(run_dir / SUMMARY_FILE, f"status is {summary.get('status')!r}, not {COMPLETED!r}")
    files = summary.get("files")
    if isinstance(files, dict):
        for name, digest in files.items():
            path = run_dir / str(name)
            if not path.is_file():
                raise RecordError(path, f"missing (listed in {SUMMARY_FILE})")
            if file_digest(path) != digest:
                raise RecordError(path, f"changed or damaged since the run wrote it (SHA-256 differs from {SUMMARY_FILE})")
        return summary
    if (run_dir / WEIGHTS_FILE).exists():
        j, n = _dims(summary, run_dir / SUMMARY_FILE)
        read_tensors(run_dir / WEIGHTS_FILE, {"W_enc": (j, n), "W_dec": (n, j), "b_enc": (j,), "b_dec": (n,)})
    if (run_dir / LATENTS_FILE).exists():
        j, _ = _dims(summary, run_dir / SUMMARY_FILE)
        read_tensors(run_dir / LATENTS_FILE, {"frequency": (j,), "mean_activation": (j,)})
    if (run_dir / GROUND_TRUTH_FILE).exists():
        read_tensors(run_dir / GROUND_TRUTH_FILE)
    return summary
