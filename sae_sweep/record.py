"""The run record on disk: file names, checked reads and atomic writes. Torch-free, Hydra-free.

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

SUMMARY_FILE = "summary.json"
WEIGHTS_FILE = "sae.safetensors"
SAE_CFG_FILE = "cfg.json"
LATENTS_FILE = "latents.safetensors"
GROUND_TRUTH_FILE = "ground_truth.safetensors"
CORRUPT = "corrupt"  # the results table's status of a completed cell whose record fails check_finished
# Largest dictionary or input dimension a record may claim (SAE.load checks before allocating anything).
MAX_DIM = 1 << 24


class RecordError(ValueError):
    """A file of a run record is missing, unreadable or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path, self.what = Path(path), what


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


def load_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecordError(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(path, f"not readable JSON ({' '.join(str(exc).split())})") from None
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
        raise RecordError(path, f"not a safetensors file ({' '.join(str(exc).split())})") from None
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
        raise RecordError(path, f"not readable ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
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
    if summary.get("status") != "completed":
        raise RecordError(run_dir / SUMMARY_FILE, f"status is {summary.get('status')!r}, not 'completed'")
    files = summary.get("files")
    if isinstance(files, dict):
        for name, digest in files.items():
            path = run_dir / str(name)
            if not path.is_file():
                raise RecordError(path, "missing (listed in summary.json)")
            if file_digest(path) != digest:
                raise RecordError(path, "changed or damaged since the run wrote it (SHA-256 differs from summary.json)")
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
