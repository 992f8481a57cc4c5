"""data=activations: a memory-mapped .npy file of real activations streamed into the trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sae_sweep.config import ActivationsDataConfig, ConfigError, RunConfig, TrainConfig, trainer_alpha
from sae_sweep.data.activations import ActivationShards
from sae_sweep.run import run
from tests.conftest import REPO, run_cli

ROWS, N, EVAL = 5000, 16, 1000
TRAIN = ROWS - EVAL


def _indexed_rows(rows: int = ROWS, n: int = N, seed: int = 0) -> np.ndarray:
    """float32 rows whose coordinate 0 is the row index, the rest random."""
    y = np.random.default_rng(seed).standard_normal((rows, n)).astype(np.float32)
    y[:, 0] = np.arange(rows)
    return y


def _save(tmp_path: Path, y: np.ndarray, name: str = "acts.npy", meta: dict | None = None) -> Path:
    path = tmp_path / name
    np.save(path, y)
    if meta is not None:
        Path(f"{path}.json").write_text(json.dumps(meta))
    return path


def _source(path: Path, **kw) -> ActivationShards:
    return ActivationShards(ActivationsDataConfig(path=str(path), **{"eval_size": EVAL, **kw}))


def _stream(src: ActivationShards, rows: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """The first ``rows`` streamed rows, (rows, n)."""
    batches = list(islice(src.batches(batch_size, seed), -(-rows // batch_size)))
    assert all(b.shape == (batch_size, src.n) and b.dtype == torch.float32 for b in batches)
    return torch.cat(batches).numpy()[:rows]


# --- config validation ---------------------------------------------------------------------------------


def test_config__reads_n_from_the_file_and_stores_the_absolute_path(tmp_path, monkeypatch):
    _save(tmp_path, _indexed_rows().astype(np.float16))
    monkeypatch.chdir(tmp_path)
    cfg = ActivationsDataConfig(path="acts.npy", eval_size=EVAL)
    assert cfg.n == N and cfg.path == str(tmp_path / "acts.npy")
    assert ActivationsDataConfig(path=cfg.path, n=N, eval_size=EVAL).n == N


def _truncated(tmp_path: Path) -> Path:
    path = _save(tmp_path, _indexed_rows(), "truncated.npy")
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def _bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "truncated":
        return _truncated(tmp_path)
    if kind == "1-D":
        return _save(tmp_path, np.zeros(ROWS, dtype=np.float32))
    if kind == "int":
        return _save(tmp_path, np.zeros((ROWS, N), dtype=np.int32))
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
    path = _save(tmp_path, _indexed_rows())
    with pytest.raises(ConfigError) as err:
        ActivationsDataConfig(**{"path": str(path), "eval_size": EVAL, **kw})
    assert str(err.value).startswith(start), str(err.value)


def test_config__sidecar_mean_of_the_wrong_length_is_an_error(tmp_path):
    path = _save(tmp_path, _indexed_rows(), meta={"mean": [0.0] * (N - 1)})
    with pytest.raises(ConfigError, match=r"data.path: the \"mean\" in .* must be a list of 16 finite numbers"):
        ActivationsDataConfig(path=str(path), eval_size=EVAL)


def test_run_config__accepts_activation_data_and_uses_its_width(tmp_path):
    path = _save(tmp_path, _indexed_rows())
    cfg = RunConfig(data=ActivationsDataConfig(path=str(path), eval_size=EVAL), dict_size=64, alpha=0.5,
                    train=TrainConfig(num_samples=1000))
    cfg.sae.l1_norm = "inputs"
    assert trainer_alpha(cfg) == pytest.approx(0.5 * 64 / N)
    with pytest.raises(ConfigError, match=r"^data must be a data config \(data=toy or data=activations\)"):
        RunConfig(data={"kind": "activations"})


# --- the stream ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk_rows, shuffle_chunks, batch_size",
    [(300, 3, 128), (50, 1, 128), (65536, 4, 256), (7, 2, 4096), (1000, 4, 1000)],
)
def test_batches__every_training_row_exactly_once_per_epoch_and_never_an_eval_row(
    tmp_path, chunk_rows, shuffle_chunks, batch_size
):
    y = _indexed_rows()
    src = _source(_save(tmp_path, y), center=False, chunk_rows=chunk_rows, shuffle_chunks=shuffle_chunks)
    assert isinstance(src._rows_RN, np.memmap) and src.ground_truth is None
    streamed = _stream(src, 2 * TRAIN, batch_size)
    index = streamed[:, 0].astype(np.int64)
    for epoch in (index[:TRAIN], index[TRAIN:]):
        assert np.array_equal(np.sort(epoch), np.arange(TRAIN))
    np.testing.assert_array_equal(streamed, y[index])  # whole rows travel together
    assert np.array_equal(src.eval_set().numpy(), y[TRAIN:])


def test_batches__mix_distant_parts_of_the_file(tmp_path):
    src = _source(_save(tmp_path, _indexed_rows()), center=False, chunk_rows=100, shuffle_chunks=4)
    first = next(src.batches(256, 0))[:, 0].numpy()
    assert len({int(i) // 100 for i in first}) == 4  # rows of all four chunks of the first group


def test_batches__epochs_differ_and_the_seed_fixes_the_stream(tmp_path):
    src = _source(_save(tmp_path, _indexed_rows()), center=False, chunk_rows=200, shuffle_chunks=2)
    a = _stream(src, 2 * TRAIN, 100, seed=0)[:, 0]
    assert not np.array_equal(a[:TRAIN], a[TRAIN:])
    assert np.array_equal(a, _stream(src, 2 * TRAIN, 100, seed=0)[:, 0])
    assert not np.array_equal(a[:TRAIN], _stream(src, TRAIN, 100, seed=1)[:, 0])
    other = _source(Path(src.cfg.path), center=False, chunk_rows=200, shuffle_chunks=2)
    assert np.array_equal(a[:TRAIN], _stream(other, TRAIN, 100, seed=0)[:, 0])  # a fresh source, same stream


# --- centring and scaling ------------------------------------------------------------------------------


def _offset_rows(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((ROWS, N)) * rng.uniform(0.5, 3.0, N) + rng.uniform(-5.0, 5.0, N)
    y[TRAIN:] += 10.0  # the eval rows sit elsewhere: their statistics must not leak into the transform
    return y.astype(np.float16)


def test_center_and_unit_norm__training_rows_have_zero_mean_and_mean_squared_norm_n(tmp_path):
    y = _offset_rows()
    src = _source(_save(tmp_path, y), center=True, scale="unit_norm", chunk_rows=256)
    epoch = _stream(src, TRAIN, 80).astype(np.float64)
    assert np.abs(epoch.mean(axis=0)).max() < 1e-4
    assert (epoch**2).sum(axis=1).mean() == pytest.approx(N, rel=1e-4)
    train = y[:TRAIN].astype(np.float64)
    mean, scale = train.mean(axis=0), np.sqrt(((train - train.mean(axis=0)) ** 2).sum(axis=1).mean() / N)
    np.testing.assert_allclose(src.eval_set().numpy(), (y[TRAIN:] - mean) / scale, rtol=1e-4, atol=1e-4)
    assert src.eval_set().numpy().mean() > 1.0  # eval rows keep their offset: the training mean was removed


def test_center_only__removes_the_mean_and_keeps_the_scale(tmp_path):
    y = _offset_rows()
    src = _source(_save(tmp_path, y), center=True, scale="none")
    epoch = _stream(src, TRAIN, 100).astype(np.float64)
    assert np.abs(epoch.mean(axis=0)).max() < 1e-4
    np.testing.assert_allclose(epoch.var(axis=0), y[:TRAIN].astype(np.float64).var(axis=0), rtol=1e-4)


def test_center__uses_the_sidecar_mean_when_present(tmp_path):
    y = _offset_rows()
    meta = {"model": "toy-lm", "layer": 3, "mean": [1.0] * N, "tokens": TRAIN}
    src = _source(_save(tmp_path, y, meta=meta), center=True, scale="none")
    assert src.metadata() == meta
    np.testing.assert_allclose(src.eval_set().numpy(), y[TRAIN:].astype(np.float32) - 1.0, atol=1e-6)
    epoch = _stream(src, TRAIN, 100).astype(np.float64)
    np.testing.assert_allclose(epoch.mean(axis=0), y[:TRAIN].astype(np.float64).mean(axis=0) - 1.0, atol=1e-4)


def test_no_center__leaves_rows_as_stored_and_metadata_is_empty_without_sidecar(tmp_path):
    y = _offset_rows()
    src = _source(_save(tmp_path, y), center=False, scale="none")
    assert src.metadata() == {}
    assert np.array_equal(src.eval_set().numpy(), y[TRAIN:].astype(np.float32))


# --- the whole run -------------------------------------------------------------------------------------


def _planted(tmp_path: Path, rows: int = 20_000, n: int = N, h: int = 24) -> Path:
    """y = sparse non-negative codes @ random unit features, float16."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((h, n))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    codes = rng.uniform(0.0, 1.0, (rows, h)) * (rng.uniform(size=(rows, h)) < 3.0 / h)
    return _save(tmp_path, (codes @ features).astype(np.float16), "planted.npy",
                 meta={"model": "planted", "layer": 0})


def test_run__in_process_writes_the_record_without_ground_truth(tmp_path):
    path = _planted(tmp_path)
    cfg = RunConfig(data=ActivationsDataConfig(path=str(path), eval_size=1024, chunk_rows=4096), dict_size=32,
                    alpha=0.1, name="test", train=TrainConfig(batch_size=128, num_samples=5000, eval_every=5000,
                                                              progress=False))
    cfg.logger.wandb.mode = "disabled"
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["h"] is None and summary["mmcs"] is None
    assert summary["n"] == N and summary["data_rows"] == 20_000 and summary["data_path"] == str(path)
    assert not (tmp_path / "run" / "ground_truth.safetensors").exists()


def test_cli__trains_on_a_planted_activation_file(tmp_path):
    path = _planted(tmp_path)
    res = run_cli("data=activations", f"data.path={path}", "dict_size=32", "train.num_samples=20000",
                  "train.eval_every=10000", "train.progress=false", "logger.wandb.mode=disabled",
                  "data.eval_size=1024", f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in ("mse", "fvu", "l0", "dead"):
        assert summary[key] is not None, key
    assert summary["mmcs"] is None and summary["h"] is None and summary["n"] == N
    assert summary["data_path"] == str(path) and summary["data_rows"] == 20_000
    assert summary["fvu"] < 0.5
    assert not (run_dir / "ground_truth.safetensors").exists()
    assert (run_dir / "latents.safetensors").exists() and (run_dir / "sae.safetensors").exists()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "mmcs" not in rows[-1]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["data"]["kind"] == "activations" and cfg["data"]["n"] == N and cfg["data"]["path"] == str(path)


@pytest.mark.parametrize("bad", ["truncated", "n_mismatch"])
def test_cli__bad_activation_file_stops_with_one_line(tmp_path, bad):
    if bad == "truncated":
        args = [f"data.path={_truncated(tmp_path)}"]
        start = "sae_sweep: error: data.path: "
    else:
        args = [f"data.path={_save(tmp_path, _indexed_rows())}", "data.n=8"]
        start = "sae_sweep: error: data.n must be"
    res = run_cli("data=activations", *args, "data.eval_size=100", "logger.wandb.mode=disabled",
                  f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("**/metrics.jsonl")), "training must not start"


def test_multirun__sweeps_an_activation_file_into_a_table_and_a_report_without_ground_truth(tmp_path):
    """A grid over J on real-style data: one row per cell, and the analysis runs with no true h."""
    from tests.sweep_helpers import cli_env, ok

    path = _planted(tmp_path)
    sweep_dir = tmp_path / "sweep"
    proc = ok(subprocess.run(
        [sys.executable, "-m", "sae_sweep", "-m", "data=activations", f"data.path={path}", "data.eval_size=1024",
         "dict_size=8,16,32", "alpha=0.3", "train.num_samples=20000", "train.eval_every=10000",
         "train.progress=false", "train.threads=1", "logger.wandb.mode=disabled", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300))
    table = pd.read_parquet(sweep_dir / "runs.parquet")
    assert sorted(table["dict_size"]) == [8, 16, 32] and set(table["status"]) == {"completed"}
    assert table["mmcs"].isna().all() and table["fvu"].notna().all()
    blob = json.loads((sweep_dir / "estimates.json").read_text())
    (group,) = blob["groups"]
    assert group["true_h"] is None and group["cells"] == 3
    assert "agreement" in group["figures"] and "mmcs_heatmap" not in group["figures"]
    assert "estimate h" in proc.stdout
