"""data=activations in process: a memory-mapped .npy file of real activations streamed into the trainer."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_sweep.config import ActivationsDataConfig, RunConfig, TrainConfig
from sae_sweep.data.activations import ActivationShards
from sae_sweep.run import run
from tests.helpers.activation_files import indexed_rows, planted, save_rows

ROWS, N, EVAL = 5000, 16, 1000
TRAIN = ROWS - EVAL


def _source(path: Path, **kw) -> ActivationShards:
    return ActivationShards(ActivationsDataConfig(path=str(path), **{"eval_size": EVAL, **kw}))


def _stream(src: ActivationShards, rows: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """The first ``rows`` streamed rows, (rows, n)."""
    batches = list(islice(src.batches(batch_size, seed), -(-rows // batch_size)))
    assert all(b.shape == (batch_size, src.n) and b.dtype == torch.float32 for b in batches)
    return torch.cat(batches).numpy()[:rows]


# --- the stream ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk_rows, shuffle_chunks, batch_size",
    [(300, 3, 128), (50, 1, 128), (65536, 4, 256), (7, 2, 4096), (1000, 4, 1000)],
)
def test_batches__every_training_row_exactly_once_per_epoch_and_never_an_eval_row(
    tmp_path, chunk_rows, shuffle_chunks, batch_size
):
    y = indexed_rows()
    src = _source(save_rows(tmp_path, y), center=False, chunk_rows=chunk_rows, shuffle_chunks=shuffle_chunks)
    assert isinstance(src._rows_RN, np.memmap) and src.ground_truth is None
    streamed = _stream(src, 2 * TRAIN, batch_size)
    index = streamed[:, 0].astype(np.int64)
    for epoch in (index[:TRAIN], index[TRAIN:]):
        assert np.array_equal(np.sort(epoch), np.arange(TRAIN))
    np.testing.assert_array_equal(streamed, y[index])  # whole rows travel together
    assert np.array_equal(src.eval_set().numpy(), y[TRAIN:])


def test_batches__mix_distant_parts_of_the_file(tmp_path):
    src = _source(save_rows(tmp_path, indexed_rows()), center=False, chunk_rows=100, shuffle_chunks=4)
    first = next(src.batches(256, 0))[:, 0].numpy()
    assert len({int(i) // 100 for i in first}) == 4  # rows of all four chunks of the first group


def test_batches__epochs_differ_and_the_seed_fixes_the_stream(tmp_path):
    src = _source(save_rows(tmp_path, indexed_rows()), center=False, chunk_rows=200, shuffle_chunks=2)
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
    src = _source(save_rows(tmp_path, y), center=True, scale="unit_norm", chunk_rows=256)
    epoch = _stream(src, TRAIN, 80).astype(np.float64)
    assert np.abs(epoch.mean(axis=0)).max() < 1e-4
    assert (epoch**2).sum(axis=1).mean() == pytest.approx(N, rel=1e-4)
    train = y[:TRAIN].astype(np.float64)
    mean, scale = train.mean(axis=0), np.sqrt(((train - train.mean(axis=0)) ** 2).sum(axis=1).mean() / N)
    np.testing.assert_allclose(src.eval_set().numpy(), (y[TRAIN:] - mean) / scale, rtol=1e-4, atol=1e-4)
    assert src.eval_set().numpy().mean() > 1.0  # eval rows keep their offset: the training mean was removed


def test_center_only__removes_the_mean_and_keeps_the_scale(tmp_path):
    y = _offset_rows()
    src = _source(save_rows(tmp_path, y), center=True, scale="none")
    epoch = _stream(src, TRAIN, 100).astype(np.float64)
    assert np.abs(epoch.mean(axis=0)).max() < 1e-4
    np.testing.assert_allclose(epoch.var(axis=0), y[:TRAIN].astype(np.float64).var(axis=0), rtol=1e-4)


def test_center__uses_the_sidecar_mean_when_present(tmp_path):
    y = _offset_rows()
    meta = {"model": "toy-lm", "layer": 3, "mean": [1.0] * N, "tokens": TRAIN}
    src = _source(save_rows(tmp_path, y, meta=meta), center=True, scale="none")
    assert src.metadata() == meta
    np.testing.assert_allclose(src.eval_set().numpy(), y[TRAIN:].astype(np.float32) - 1.0, atol=1e-6)
    epoch = _stream(src, TRAIN, 100).astype(np.float64)
    np.testing.assert_allclose(epoch.mean(axis=0), y[:TRAIN].astype(np.float64).mean(axis=0) - 1.0, atol=1e-4)


def test_no_center__leaves_rows_as_stored_and_metadata_is_empty_without_sidecar(tmp_path):
    y = _offset_rows()
    src = _source(save_rows(tmp_path, y), center=False, scale="none")
    assert src.metadata() == {}
    assert np.array_equal(src.eval_set().numpy(), y[TRAIN:].astype(np.float32))


# --- the whole run -------------------------------------------------------------------------------------


def test_run__in_process_writes_the_record_without_ground_truth(tmp_path):
    path = planted(tmp_path)
    cfg = RunConfig(data=ActivationsDataConfig(path=str(path), eval_size=1024, chunk_rows=4096), dict_size=32,
                    alpha=0.1, name="test", train=TrainConfig(batch_size=128, num_samples=5000, eval_every=5000,
                                                              progress=False))
    cfg.logger.wandb.mode = "disabled"
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["h"] is None and summary["mmcs"] is None
    assert summary["n"] == N and summary["data_rows"] == 20_000 and summary["data_path"] == str(path)
    assert not (tmp_path / "run" / "ground_truth.safetensors").exists()
