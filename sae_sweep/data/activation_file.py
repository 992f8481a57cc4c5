"""The activation file on disk: a 2-D float16/float32 ``.npy`` of (rows, n) and its optional sidecar JSON.

Every reader of an activation file opens it here: the header checked before numpy parses anything
(``np.load`` would take any other file for a pickle), the memory map, the finiteness scan and the
sidecar ``<file>.json`` (model, layer, tokens, the per-dimension ``mean``, ...). Numpy only.

Errors are :class:`ActivationFileError`, one line naming the file; the config check
(``ActivationsDataConfig``) prefixes them with the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sae_sweep.record import single_line

NPY_MAGIC = b"\x93NUMPY"
ACTIVATION_DTYPES = ("float16", "float32")


class ActivationFileError(ValueError):
    """An activation file or its sidecar that cannot be used; the message is one line naming the file."""


def sidecar_path(file: str | Path) -> Path:
    """The sidecar JSON of an activation file: ``<file>.json`` (e.g. ``acts.npy.json``)."""
    return Path(f"{file}.json")


def open_rows(file: str | Path) -> np.ndarray:
    """The file's rows as a read-only memory map, (rows, n); the header is checked first."""
    prefix = f"{file} is not a readable 2-D float .npy file"
    try:
        with open(file, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise ActivationFileError(f"{prefix} ({single_line(exc) or type(exc).__name__})") from None
    if magic != NPY_MAGIC:  # np.load would take any other file for a pickle
        raise ActivationFileError(f"{prefix} (no .npy header: the file does not start with {NPY_MAGIC!r})")
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ActivationFileError(f"{prefix} ({single_line(exc) or type(exc).__name__})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        close = getattr(arr, "close", None)
        if close is not None:
            close()
        raise ActivationFileError(f"{prefix} (an .npz archive, not an .npy array)")
    if arr.ndim != 2:
        raise ActivationFileError(f"{prefix} (shape {arr.shape}; expected (rows, n))")
    if arr.dtype.name not in ACTIVATION_DTYPES:
        raise ActivationFileError(f"{prefix} (dtype {arr.dtype}; allowed {', '.join(ACTIVATION_DTYPES)})")
    return arr


def activation_file_shape(file: str | Path) -> tuple[int, int]:
    """(rows, n) of the file, from its header (nothing but the header is read)."""
    rows, n = open_rows(file).shape
    return int(rows), int(n)


_FINITE_CHECKED: dict[tuple[str, int, int], None] = {}


def check_finite_rows(file: str | Path, chunk_rows: int = 1 << 16) -> None:
    """Every value of the file is finite (NaN or inf would only surface as a diverged run).

    Reads the whole file once per process (memoised by path, size and modification time): about a
    second per GB."""
    st = Path(file).stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key in _FINITE_CHECKED:
        return
    arr = open_rows(file)
    for lo in range(0, arr.shape[0], chunk_rows):
        block = np.asarray(arr[lo : lo + chunk_rows])
        finite = np.isfinite(block)
        if not finite.all():
            row, col = (int(i) for i in np.argwhere(~finite)[0])
            raise ActivationFileError(f"{file} must hold finite numbers only, got {block[row, col]} at row "
                                      f"{lo + row}, column {col}")
    _FINITE_CHECKED[key] = None


def read_activation_metadata(file: str | Path) -> dict[str, Any]:
    """The sidecar of the file as a dict, or {} when there is none."""
    sidecar = sidecar_path(file)
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ActivationFileError(f"the sidecar {sidecar} is not readable JSON ({single_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ActivationFileError(f"the sidecar {sidecar} must hold a JSON object, got {type(meta).__name__}")
    return meta
