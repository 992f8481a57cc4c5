"""The run config (sae_sweep/config.py) for data=activations: the file's width, the absolute path, and
bad values rejected with the field's name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sae_sweep.config import ActivationsDataConfig, ConfigError, RunConfig, TrainConfig, trainer_alpha
from tests.helpers.activation_files import indexed_rows, save_rows

ROWS, N, EVAL = 5000, 16, 1000


# --- config validation ---------------------------------------------------------------------------------


def test_config__reads_n_from_the_file_and_stores_the_absolute_path(tmp_path, monkeypatch):
    save_rows(tmp_path, indexed_rows().astype(np.float16))
    monkeypatch.chdir(tmp_path)
    cfg = ActivationsDataConfig(path="acts.npy", eval_size=EVAL)
    assert cfg.n == N and cfg.path == str(tmp_path / "acts.npy")
    assert ActivationsDataConfig(path=cfg.path, n=N, eval_size=EVAL).n == N


def _truncated(tmp_path: Path) -> Path:
    path = save_rows(tmp_path, indexed_rows(), "truncated.npy")
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def _bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "truncated":
        return _truncated(tmp_path)
    if kind == "1-D":
        return save_rows(tmp_path, np.zeros(ROWS, dtype=np.float32))
    if kind == "int":
        return save_rows(tmp_path, np.zeros((ROWS, N), dtype=np.int32))
    path = tmp_path / "acts.npy"
    if kind == "pickle":
        np.save(path, np.array([[{"a": 1}, 2]], dtype=object), allow_pickle=True)
    else:  # not an .npy file at all
        path.write_text("hello")
    return path


BAD_FILES = {"truncated": "mmap length is greater than file size", "1-D": "shape (5000,)", "int": "dtype int32",
             "pickle": "Python objects", "text": "no .npy header"}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_config__unreadable_file_is_a_one_line_error(tmp_path, kind):
    path, reason = _bad_file(tmp_path, kind), BAD_FILES[kind]
    with pytest.raises(ConfigError) as err:
        ActivationsDataConfig(path=str(path), eval_size=EVAL)
    msg = str(err.value)
    assert msg.startswith(f"data.path: {path} is not a readable 2-D float .npy file (") and reason in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "kw, start",
    [
        ({"path": "missing.npy"}, "data.path must be an existing .npy file, got 'missing.npy'"),
        ({"n": 8}, "data.n must be 0 (read from the file) or the file's width 16, got 8"),
        ({"eval_size": ROWS}, "data.eval_size must be an integer in [1, 4999]"),
        ({"eval_size": 0}, "data.eval_size must be an integer >= 1"),
        ({"scale": "l2"}, "data.scale must be one of none, unit_norm, got 'l2'"),
        ({"chunk_rows": 0}, "data.chunk_rows must be an integer >= 1"),
        ({"shuffle_chunks": 0}, "data.shuffle_chunks must be an integer >= 1"),
    ],
)
def test_config__bad_value_names_the_field(tmp_path, kw, start):
    path = save_rows(tmp_path, indexed_rows())
    with pytest.raises(ConfigError) as err:
        ActivationsDataConfig(**{"path": str(path), "eval_size": EVAL, **kw})
    assert str(err.value).startswith(start), str(err.value)


def test_config__sidecar_mean_of_the_wrong_length_is_an_error(tmp_path):
    path = save_rows(tmp_path, indexed_rows(), meta={"mean": [0.0] * (N - 1)})
    with pytest.raises(ConfigError, match=r"data.path: the \"mean\" in .* must be a list of 16 finite numbers"):
        ActivationsDataConfig(path=str(path), eval_size=EVAL)


def test_run_config__accepts_activation_data_and_uses_its_width(tmp_path):
    path = save_rows(tmp_path, indexed_rows())
    cfg = RunConfig(data=ActivationsDataConfig(path=str(path), eval_size=EVAL), dict_size=64, alpha=0.5,
                    train=TrainConfig(num_samples=1000))
    cfg.sae.l1_norm = "inputs"
    assert trainer_alpha(cfg) == pytest.approx(0.5 * 64 / N)
    with pytest.raises(ConfigError, match=r"^data must be a data config \(data=toy or data=activations\)"):
        RunConfig(data={"kind": "activations"})
