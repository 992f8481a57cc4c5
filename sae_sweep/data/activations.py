"""Real activations: a memory-mapped (rows, n) .npy file streamed as shuffled float32 batches.

Layout of the file: rows ``[0, rows - eval_size)`` train, the last ``eval_size`` rows are the held-out
eval set. Only the memmap is held; rows are read a chunk at a time and never all at once.

The training stream, for a run seed s, is a sequence of epochs; each visits every training row once:

* the training rows are cut into contiguous chunks of ``chunk_rows`` (the last one may be shorter);
* epoch e draws from ``np.random.default_rng((s, e))`` a permutation of the chunks, then takes them
  ``shuffle_chunks`` at a time: reads them (contiguous slices, converted to float32, centred and
  scaled), concatenates, permutes the rows in memory and cuts batches;
* rows left over after the last full batch of a group (fewer than a batch) open the next batch, also
  across an epoch's end, so no row is dropped and none repeats within an epoch.

Centring and scaling (``center``, ``scale``) are one affine map ``y -> (y - mean) / scale`` applied to
training batches and the eval set alike; its constants come from the sidecar JSON's ``mean`` when
present, else from the first (up to ``STATS_ROWS``) training rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sae_sweep.config import ActivationsDataConfig, ConfigError
from sae_sweep.data.activation_file import open_rows, read_activation_metadata

STATS_ROWS = 65536  # training rows (read in order from the start) that the mean and the scale come from
_STATS_PIECE = 8192  # rows per read while computing them, to bound memory at (piece, n) float64


class ActivationShards:
    """Batches of real activations from one memory-mapped .npy file (see the module docstring)."""

    ground_truth = None  # real data has no known features

    def __init__(self, cfg: ActivationsDataConfig):
        self.cfg = cfg
        self._rows_RN = open_rows(cfg.path)  # memmap, (rows, n)
        self.rows = int(self._rows_RN.shape[0])
        self.train_rows = self.rows - cfg.eval_size
        self._metadata = read_activation_metadata(cfg.path)
        self.mean_N, self.scale = self._transform()
        self._mean_t = torch.from_numpy(self.mean_N)

    @property
    def n(self) -> int:
        return int(self._rows_RN.shape[1])

    def metadata(self) -> dict[str, Any]:
        """The sidecar JSON (``<path>.json``) as a dict, or {} when there is none."""
        return dict(self._metadata)

    # --- the affine map y -> (y - mean) / scale ----------------------------------------------------

    def _pieces(self, stop: int) -> Iterator[np.ndarray]:
        """Rows [0, stop) in order, float64, a piece at a time."""
        for lo in range(0, stop, _STATS_PIECE):
            yield np.asarray(self._rows_RN[lo : min(lo + _STATS_PIECE, stop)], dtype=np.float64)

    def _transform(self) -> tuple[np.ndarray, float]:
        """The mean (n,) float32 subtracted (zeros when not centring) and the divisor (1 for scale=none)."""
        m = min(STATS_ROWS, self.train_rows)
        mean = np.zeros(self.n, dtype=np.float64)
        if self.cfg.center:
            if "mean" in self._metadata:
                mean = np.asarray(self._metadata["mean"], dtype=np.float64)
            else:
                mean = sum(p.sum(axis=0) for p in self._pieces(m)) / m
        if not np.isfinite(mean).all():
            raise ConfigError(f"data.center: the mean of the first {m} training rows of {self.cfg.path} is not finite")
        scale = 1.0
        if self.cfg.scale == "unit_norm":
            mean_sq_norm = sum(float(((p - mean) ** 2).sum()) for p in self._pieces(m)) / m
            if not (np.isfinite(mean_sq_norm) and mean_sq_norm > 0.0):
                raise ConfigError(
                    f"data.scale=unit_norm needs training rows with a finite, non-zero mean squared norm "
                    f"(after centring), got {mean_sq_norm} over the first {m} rows of {self.cfg.path}"
                )
            scale = float(np.sqrt(mean_sq_norm / self.n))
        return mean.astype(np.float32), scale

    def _finish(self, raw_RN: torch.Tensor) -> torch.Tensor:
        """Stored rows (any float dtype) as a new float32 tensor, centred and scaled, (R, n)."""
        y = raw_RN.to(torch.float32, copy=True)
        if self.cfg.center:
            y.sub_(self._mean_t)
        if self.scale != 1.0:
            y.mul_(np.float32(1.0 / self.scale).item())
        return y

    def _read(self, lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) as a new float32 tensor, centred and scaled, (hi - lo, n)."""
        return self._finish(torch.from_numpy(np.array(self._rows_RN[lo:hi])))

    # --- what the run uses ---------------------------------------------------------------------------

    def eval_set(self) -> torch.Tensor:
        """The last eval_size rows, float32 (eval_size, n), transformed like the training batches."""
        return self._read(self.train_rows, self.rows)

    def chunks(self) -> list[tuple[int, int]]:
        """The training rows' contiguous chunks [lo, hi), in file order."""
        step = self.cfg.chunk_rows
        return [(lo, min(lo + step, self.train_rows)) for lo in range(0, self.train_rows, step)]

    def batches(self, batch_size: int, seed: int, position: dict[str, Any] | None = None) -> ActivationStream:
        """Endless iterator of float32 (batch_size, n) training batches; the stream is fixed by ``seed``.

        ``position``: an :meth:`ActivationStream.position` of the same stream, to continue from there."""
        return ActivationStream(self, batch_size, seed, position)


class ActivationStream:
    """The training stream of the module docstring, able to say where it is.

    After any batch, what follows is fixed by (epoch, group of chunks, the generator's state before
    that group's row permutation, rows of the group already taken): the rows carried over from the
    previous group are always used up by then. :meth:`position` is that, as JSON; a stream built from
    it re-reads the group, draws the same permutation and goes on from the same row.
    """

    def __init__(self, shards: ActivationShards, batch_size: int, seed: int, position: dict[str, Any] | None = None):
        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        self._pos: dict[str, Any] | None = None
        if position is not None:
            ok = (position.get("kind") == "activations" and position.get("seed") == seed
                  and position.get("batch_size") == batch_size and position.get("rows") == shards.train_rows)
            if not ok:
                raise ValueError(f"not a position of this activation stream (seed {seed}, batch {batch_size}, "
                                 f"{shards.train_rows} training rows): {str(position)[:120]}")
            np.random.default_rng().bit_generator.state = position["rng"]  # a bad state raises here
        self._it = self._batches(position)

    def __iter__(self) -> ActivationStream:
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._it)

    def position(self) -> dict[str, Any]:
        """Where the stream stands (JSON), after the last batch drawn; None before the first."""
        return self._pos  # type: ignore[return-value]

    def _batches(self, resume: dict[str, Any] | None) -> Iterator[torch.Tensor]:
        shards, batch_size, seed = self.shards, self.batch_size, self.seed
        chunks = shards.chunks()
        rows = shards._rows_RN
        # Rows stay in their stored dtype (float16: half the bytes) until a batch is cut; each batch is
        # gathered with torch's (parallel) index_select and only then converted, centred and scaled.
        carry = torch.from_numpy(np.empty((0, shards.n), dtype=rows.dtype))
        epoch = 0 if resume is None else int(resume["epoch"])
        while True:
            rng = np.random.default_rng((seed, epoch))
            order = rng.permutation(len(chunks))
            for gi, g in enumerate(range(0, len(order), shards.cfg.shuffle_chunks)):
                if resume is not None:
                    if gi < resume["group"]:
                        continue
                    rng.bit_generator.state = resume["rng"]
                group = [chunks[i] for i in order[g : g + shards.cfg.shuffle_chunks]]
                y_RN = torch.from_numpy(np.concatenate([rows[lo:hi] for lo, hi in group]))
                before = rng.bit_generator.state
                perm = torch.from_numpy(rng.permutation(y_RN.shape[0]))
                start = 0
                if resume is not None:  # the carried rows were used up before the position was taken
                    start, resume = int(resume["start"]), None
                elif carry.shape[0] > 0:
                    start = min(batch_size - carry.shape[0], perm.numel())
                    carry = torch.cat([carry, y_RN.index_select(0, perm[:start])])
                    if carry.shape[0] < batch_size:
                        continue
                    self._pos = self._position(epoch, gi, before, start)
                    yield shards._finish(carry)
                while start + batch_size <= perm.numel():
                    batch = y_RN.index_select(0, perm[start : start + batch_size])
                    start += batch_size
                    self._pos = self._position(epoch, gi, before, start)
                    yield shards._finish(batch)
                carry = y_RN.index_select(0, perm[start:])
            epoch += 1

    def _position(self, epoch: int, group: int, rng_state: dict[str, Any], start: int) -> dict[str, Any]:
        return {"kind": "activations", "seed": self.seed, "batch_size": self.batch_size,
                "rows": self.shards.train_rows, "epoch": epoch, "group": group, "rng": rng_state, "start": start}
