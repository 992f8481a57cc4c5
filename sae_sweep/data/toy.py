"""Ground-truth toy data: y = F x with sparse, non-negative, correlated codes x.

The generative model (after Sharkey, Braun & beren 2022, with its replication's quirks removed):

* ``F`` (stored as rows ``features_HN``): h random Gaussian directions in R^n, unit norm.
* Feature i fires with marginal probability ``p_i = min(1, c * w_i)``, ``w_i`` from the decay law
  (exponential ``decay_rate**i``, zipf ``(i+1)**-s`` or constant), ``c`` solved so that the expected
  number of active features per sample, *including* the one forced into otherwise empty samples,
  equals ``mean_active``.
* Co-firing is decided per sample by a Gaussian copula: a latent ``z ~ N(0, Sigma)`` with unit
  variances and ``Sigma = rho * U U^T + diag(1 - rho)`` (U: h random unit vectors in R^r, so
  ``corr(z_i, z_j) = rho * u_i.u_j``); feature i fires iff ``z_i < Phi^-1(p_i)``, which has
  probability exactly ``p_i``. Comparing against the precomputed quantile avoids evaluating the
  normal CDF per entry; the low-rank factor keeps the cost at one Gaussian draw per (sample, feature).
* An active coefficient is ``U[0, 1] * magnitude_decay**i``. A sample with no active feature gets
  one, drawn with probability proportional to ``p_i``; the saved ``probabilities`` are the realised
  marginals ``p_i + P(no feature) * p_i / sum(p)``.
* Optional isotropic Gaussian noise of standard deviation ``noise_std`` per coordinate.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf

from sae_sweep.config import ToyDataConfig


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from a tuple of non-negative integers (independent streams per tuple)."""
    state = np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


# Stream identifiers for derive_seed, so ground truth, eval set and training batches never share draws.
STREAM_GROUND_TRUTH = 0
STREAM_EVAL = 1
STREAM_TRAIN = 2

# Sampler tuning (see ToyFeatures._draw): one batch is spread over at most _MAX_THREADS threads.
_CHUNK_LATENTS = 1 << 17  # latents (rows x h) per chunk: big enough to amortise the per-chunk overhead
_BLAS_SERIAL_MNK = 1 << 18  # OpenBLAS (numpy's) runs a GEMM with m*n*k at most this on one thread
_MAX_THREADS = 2
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _thread_pool() -> ThreadPoolExecutor:
    """The sampler's worker threads, created on first use and again after a fork (threads do not survive one)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=_MAX_THREADS - 1, thread_name_prefix="toy-sampler"))
    return _POOL[1]


def decay_weights(cfg: ToyDataConfig) -> torch.Tensor:
    """Unnormalised firing weights w_i of the decay law, float64, shape (h,)."""
    i = torch.arange(cfg.h, dtype=torch.float64)
    if cfg.decay == "exponential":
        return cfg.decay_rate**i
    if cfg.decay == "zipf":
        return (i + 1.0) ** (-cfg.zipf_exponent)
    return torch.ones(cfg.h, dtype=torch.float64)


def _scale_to_sum(w: torch.Tensor, target: float) -> torch.Tensor:
    """p = min(1, c w) with sum(p) = target, by bisection on c (sum is monotone in c)."""
    lo, hi = 0.0, 1.0
    while torch.clamp(hi * w, max=1.0).sum().item() < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if torch.clamp(mid * w, max=1.0).sum().item() < target:
            lo = mid
        else:
            hi = mid
    return torch.clamp(hi * w, max=1.0)


@dataclass(frozen=True)
class GroundTruth:
    """Everything that defines the toy distribution; saved beside every run."""

    features_HN: torch.Tensor  # (h, n) unit-norm feature directions (the columns of F)
    probabilities_H: torch.Tensor  # (h,) realised marginal firing probabilities
    copula_probabilities_H: torch.Tensor  # (h,) marginals of the copula alone, before forcing
    thresholds_H: torch.Tensor  # (h,) Phi^-1 of copula_probabilities_H
    loadings_RH: torch.Tensor  # (r, h) sqrt(rho) * u_i: latent corr(z_i, z_j) = loadings_i . loadings_j
    max_magnitudes_H: torch.Tensor  # (h,) upper end of each feature's uniform magnitude
    p_empty: float  # probability that the copula fires no feature

    def latent_correlation(self) -> torch.Tensor:
        """The copula's latent correlation matrix Sigma, (h, h), unit diagonal."""
        sigma = self.loadings_RH.T @ self.loadings_RH
        sigma.fill_diagonal_(1.0)
        return sigma

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors for safetensors (F is stored as n x h, the report's convention)."""
        return {
            "F": self.features_HN.T.contiguous(),
            "probabilities": self.probabilities_H,
            "copula_probabilities": self.copula_probabilities_H,
            "latent_correlation_loadings": self.loadings_RH,
            "max_magnitudes": self.max_magnitudes_H,
            "p_empty": torch.tensor([self.p_empty], dtype=torch.float64),
        }


class ToyFeatures:
    """Seeded sampler of toy activations; ground truth fixed by ``cfg.seed``."""

    def __init__(self, cfg: ToyDataConfig, *, p_empty_samples: int = 1 << 14):
        self.cfg = cfg
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_GROUND_TRUTH))
        features = torch.randn(cfg.h, cfg.n, generator=g, dtype=torch.float32)
        features /= features.norm(dim=1, keepdim=True)
        directions = torch.randn(cfg.correlation_rank, cfg.h, generator=g, dtype=torch.float32)
        directions /= directions.norm(dim=0, keepdim=True)
        loadings = (cfg.correlation**0.5) * directions
        self._sd_idio = (1.0 - cfg.correlation) ** 0.5
        magnitudes = cfg.magnitude_decay ** torch.arange(cfg.h, dtype=torch.float32)

        # Solve for the copula marginals p = min(1, c w) so that E[#active] = sum(p) + P(empty) =
        # mean_active. P(empty) depends on c: exact product for independent firing; with correlation,
        # a sample s fires nothing iff c < c*(s) = min_i Phi(z_si) / w_i, so one Monte-Carlo pass
        # computing c* per sample gives P(empty | c) for every c, and the fixed point costs nothing more.
        w = decay_weights(cfg)
        self._loadings_RH = loadings
        c_star = None
        if cfg.correlation > 0.0:
            mc = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_GROUND_TRUTH, 1))
            c_star = torch.cat([
                (torch.special.ndtr(self._latent(min(4096, p_empty_samples - i), mc).double()) / w).amin(dim=1)
                for i in range(0, p_empty_samples, 4096)
            ])
        p_empty = 0.0
        for _ in range(8):
            p = _scale_to_sum(w, cfg.mean_active - p_empty)
            scale = (p / w).max().item() if bool((p < 1).any()) else float("inf")
            if c_star is None:
                new_p_empty = float(torch.prod(1.0 - p).item())
            else:
                new_p_empty = float((c_star >= scale).double().mean().item())
            if abs(new_p_empty - p_empty) < 1e-9:
                break
            p_empty = new_p_empty
        self._thresholds_H = torch.special.ndtri(p).to(torch.float32)
        q = p / p.sum()
        self.ground_truth = GroundTruth(
            features_HN=features,
            probabilities_H=(p + p_empty * q).to(torch.float32),
            copula_probabilities_H=p.to(torch.float32),
            thresholds_H=self._thresholds_H,
            loadings_RH=loadings,
            max_magnitudes_H=magnitudes,
            p_empty=p_empty,
        )
        self._forced_choice_H = q.to(torch.float32)
        self._features_HN = features
        self._magnitudes_H = magnitudes

    @property
    def n(self) -> int:
        return self.cfg.n

    def _latent(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """The copula's latent Gaussians z, (B, h), unit variance, correlation rho * u_i.u_j."""
        z_BH = torch.randn(batch_size, self.cfg.h, generator=g)
        if self.cfg.correlation > 0.0:
            factors_BR = torch.randn(batch_size, self.cfg.correlation_rank, generator=g)
            z_BH.mul_(self._sd_idio).addmm_(factors_BR, self._loadings_RH)
        return z_BH

    def sample_codes(
        self, batch_size: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse codes of one batch: (active mask (B, h), row idx, feature idx, magnitude) of the nnz.

        Draws exactly what :meth:`sample` draws from ``g``, so the same generator state gives the
        codes behind the same ``y``.
        """
        active_BH, flat, values, _ = self._draw(batch_size, g)
        return active_BH, flat // self.cfg.h, flat % self.cfg.h, values

    def sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """One batch of activations y, float32 (B, n)."""
        _, flat, values, counts_B = self._draw(batch_size, g)
        offsets_B = torch.zeros(batch_size, dtype=torch.long)
        torch.cumsum(counts_B[:-1], dim=0, out=offsets_B[1:])
        y_BN = nnf.embedding_bag(flat % self.cfg.h, self._features_HN, offsets_B, mode="sum",
                                 per_sample_weights=values)
        if self.cfg.noise_std > 0.0:
            y_BN.add_(torch.randn(y_BN.shape, generator=g), alpha=self.cfg.noise_std)
        return y_BN

    # --- the sampler's internals -------------------------------------------------------------------
    # The copula fires feature i iff sd * e_i + m_i < t_i, with e_i ~ N(0, 1) idiosyncratic and
    # m = factors @ loadings common: iff e_i < (t_i - m_i) / sd, and that limit is one GEMM of
    # [factors, 1] against [-loadings; t] / sd (with correlation 1, sd = 0: iff t_i - m_i > 0, and e
    # is not drawn at all).
    # The idiosyncratic draws, one per (sample, feature), are most of the work and are serial per
    # generator, so the batch is cut into chunks that run on up to _MAX_THREADS threads, each chunk
    # drawing from its own torch.Generator seeded from ``g`` before any chunk runs: the stream
    # depends on (g, B) alone, not on the thread count or the order in which chunks ran.
    # Inside a chunk only serial kernels run (torch's Gaussian draws, numpy's comparisons and
    # indexing, GEMMs below OpenBLAS's threading threshold), all releasing the GIL: on a shared
    # 2-core machine every parallel (OpenMP) region can wait a whole scheduler slice for its second
    # thread (benchmarks/bench_toy.py; busy-machine tables in benchmarks/HISTORY.md). Outside the
    # chunks, one embedding_bag per batch forms y.

    def _draw(
        self, batch_size: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of codes: (active mask (B, h), flat row-major indices and magnitudes of the nnz, nnz per row)."""
        rows_per_chunk = max(1, _CHUNK_LATENTS // self.cfg.h)
        starts = list(range(0, batch_size, rows_per_chunk))
        seeds = torch.randint(0, 1 << 62, (len(starts),), generator=g).tolist()
        active_BH = torch.empty(batch_size, self.cfg.h, dtype=torch.bool)
        _ = self._limit_np  # computed once, here, before any thread reads it
        tasks = [(lo, min(lo + rows_per_chunk, batch_size), seed) for lo, seed in zip(starts, seeds, strict=True)]

        def run(group: list[tuple[int, int, int]]) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
            return [self._draw_chunk(active_BH, lo, hi, seed) for lo, hi, seed in group]

        workers = max(1, min(_MAX_THREADS, torch.get_num_threads(), len(tasks)))
        if workers == 1:
            parts = run(tasks)
        else:  # contiguous groups of chunks, one per thread; the calling thread runs the first
            bounds = [round(i * len(tasks) / workers) for i in range(workers + 1)]
            groups = [tasks[bounds[i] : bounds[i + 1]] for i in range(workers)]
            futures = [_thread_pool().submit(run, group) for group in groups[1:]]
            parts = run(groups[0])
            for f in futures:
                parts += f.result()
        flat = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        counts_B = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        return active_BH, flat, torch.cat([p[2] for p in parts]), counts_B

    def _draw_chunk(
        self, active_BH: torch.Tensor, lo: int, hi: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Rows lo:hi from their own generator: firing, the forced feature, magnitudes.

        Returns the batch-wide flat (row-major) indices of the active entries, the active count per
        row and the magnitudes of the active entries.
        """
        g = torch.Generator().manual_seed(seed)
        cfg, m, h, r = self.cfg, hi - lo, self.cfg.h, self.cfg.correlation_rank
        mask = active_BH[lo:hi].numpy()
        if cfg.correlation == 0.0:
            np.less(torch.randn(m, h, generator=g).numpy(), self._limit_np[-1], out=mask)
        else:
            factors = np.ones((m, r + 1), dtype=np.float32)
            factors[:, :r] = torch.randn(m, r, generator=g).numpy()
            limit = np.empty((m, h), dtype=np.float32)
            step = max(1, _BLAS_SERIAL_MNK // ((r + 1) * h))
            for i in range(0, m, step):  # (t - factors @ loadings) / sd, in serial-sized GEMMs
                np.matmul(factors[i : i + step], self._limit_np, out=limit[i : i + step])
            if self._sd_idio > 0.0:
                np.less(torch.randn(m, h, generator=g).numpy(), limit, out=mask)
            else:
                np.greater(limit, 0.0, out=mask)
        flat = np.flatnonzero(mask)
        counts = np.bincount(flat // h, minlength=m)
        empty = np.flatnonzero(counts == 0)
        if empty.size > 0:  # a sample with no active feature gets one, drawn in proportion to p
            forced = torch.multinomial(self._forced_choice_H, empty.size, replacement=True, generator=g)
            mask[empty, forced.numpy()] = True
            counts[empty] = 1
            flat = np.flatnonzero(mask)
        values = torch.rand(flat.size, generator=g)
        if cfg.magnitude_decay != 1.0:
            values.mul_(self._magnitudes_H[torch.from_numpy(flat % h)])
        return flat + lo * h, counts, values

    @functools.cached_property
    def _limit_np(self) -> np.ndarray:
        """[-loadings; t] / sd, (r + 1, h): [factors, 1] @ this is the limit e is compared against
        (sd = 1 without correlation, so the last row is t; sd is taken as 1 when it is 0)."""
        sd = self._sd_idio if self._sd_idio > 0.0 else 1.0
        return (torch.cat([-self._loadings_RH, self._thresholds_H[None]]) / sd).numpy()

    def eval_set(self) -> torch.Tensor:
        """The held-out evaluation set (eval_size, n), fixed by the data seed alone."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, STREAM_EVAL))
        return torch.cat(
            [self.sample(min(8192, self.cfg.eval_size - i), g) for i in range(0, self.cfg.eval_size, 8192)]
        )

    def batches(self, batch_size: int, seed: int, position: dict[str, Any] | None = None) -> ToyStream:
        """Endless iterator of training batches; the stream is fixed by (data seed, run seed).

        ``position``: a :meth:`ToyStream.position` of the same stream, to continue from there."""
        return ToyStream(self, batch_size, derive_seed(self.cfg.seed, STREAM_TRAIN, seed), position)


class ToyStream:
    """A toy training stream that can say where it is: every batch is drawn from one generator, whose
    state after a batch is the whole position (a checkpoint stores it; checkpoint.py)."""

    def __init__(self, toy: ToyFeatures, batch_size: int, seed: int, position: dict[str, Any] | None = None):
        self.toy, self.batch_size, self.seed = toy, batch_size, seed
        self.g = torch.Generator().manual_seed(seed)
        if position is not None:
            if position.get("kind") != "toy" or position.get("seed") != seed:
                raise ValueError(f"not a position of this toy stream (seed {seed}): {str(position)[:80]}")
            self.g.set_state(torch.tensor(position["generator"], dtype=torch.uint8))

    def __iter__(self) -> ToyStream:
        return self

    def __next__(self) -> torch.Tensor:
        return self.toy.sample(self.batch_size, self.g)

    def position(self) -> dict[str, Any]:
        """Where the stream stands (JSON): the next batch is the one after the last drawn."""
        return {"kind": "toy", "seed": self.seed, "generator": self.g.get_state().tolist()}
