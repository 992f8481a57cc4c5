"""The activation file reader (sae_sweep/data/activation_file.py): errors name the file, not a field."""

from __future__ import annotations

import numpy as np
import pytest

from sae_sweep.data.activation_file import (
    ActivationFileError,
    activation_file_shape,
    check_finite_rows,
    open_rows,
    read_activation_metadata,
    sidecar_path,
)
from tests.helpers.activation_files import indexed_rows, save_rows


def test_open_rows__maps_the_file_read_only(tmp_path):
    path = save_rows(tmp_path, indexed_rows(100, 4).astype(np.float16), meta={"layer": 2})
    rows = open_rows(path)
    assert isinstance(rows, np.memmap) and not rows.flags.writeable and activation_file_shape(path) == (100, 4)
    assert sidecar_path(path).name == "acts.npy.json" and read_activation_metadata(path) == {"layer": 2}


def test_open_rows__refuses_a_file_without_the_npy_header(tmp_path):
    path = tmp_path / "acts.npy"
    path.write_bytes(b"\x80\x04not a pickle to load")
    with pytest.raises(ActivationFileError, match=rf"^{path} is not a readable 2-D float .npy file \(no .npy header"):
        open_rows(path)


def test_check_finite_rows__names_the_first_bad_row(tmp_path):
    y = indexed_rows(50, 4)
    y[37, 2] = np.inf
    path = save_rows(tmp_path, y)
    with pytest.raises(ActivationFileError, match=rf"^{path} must hold finite numbers only, got inf at row 37, column 2$"):
        check_finite_rows(path, chunk_rows=16)


def test_read_activation_metadata__a_sidecar_that_is_no_object_is_an_error(tmp_path):
    path = save_rows(tmp_path, indexed_rows(10, 4))
    assert read_activation_metadata(path) == {}
    sidecar_path(path).write_text("[1, 2]")
    with pytest.raises(ActivationFileError, match=r"must hold a JSON object, got list$"):
        read_activation_metadata(path)
