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

from dataclasses import dataclass

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

    def __init__(self, cfg: ToyDataConfig, *, p_empty_samples: int = 1 << 16):
        self.cfg = cfg
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_GROUND_TRUTH))
        features = torch.randn(cfg.h, cfg.n, generator=g, dtype=torch.float32)
        features /= features.norm(dim=1, keepdim=True)
        directions = torch.randn(cfg.correlation_rank, cfg.h, generator=g, dtype=torch.float32)
        directions /= directions.norm(dim=0, keepdim=True)
        loadings = (cfg.correlation**0.5) * directions
        self._sd_idio = (1.0 - cfg.correlation) ** 0.5
        magnitudes = cfg.magnitude_decay ** torch.arange(cfg.h, dtype=torch.float32)

        # Solve for the copula marginals p so that E[#active] = sum(p) + P(empty) = mean_active.
        # P(empty) depends on p (and, with correlation, on the copula): fixed-point iteration,
        # exact product for independent firing, a fixed Monte-Carlo estimate otherwise.
        w = decay_weights(cfg)
        self._loadings_RH = loadings
        p_empty = 0.0
        for _ in range(4):
            p = _scale_to_sum(w, cfg.mean_active - p_empty)
            self._thresholds_H = torch.special.ndtri(p).to(torch.float32)
            if cfg.correlation == 0.0:
                p_empty = float(torch.prod(1.0 - p).item())
            else:
                mc = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_GROUND_TRUTH, 1))
                fired = self._fire(p_empty_samples, mc)
                p_empty = float((~fired.any(dim=1)).double().mean().item())
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

    def _fire(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """Bool (B, h): which features the copula fires for each sample."""
        z_BH = torch.randn(batch_size, self.cfg.h, generator=g)
        if self.cfg.correlation > 0.0:
            factors_BR = torch.randn(batch_size, self.cfg.correlation_rank, generator=g)
            z_BH.mul_(self._sd_idio).addmm_(factors_BR, self._loadings_RH)
        return z_BH < self._thresholds_H

    def sample_codes(
        self, batch_size: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse codes of one batch: (active mask (B, h), row idx, feature idx, magnitude) of the nnz."""
        active_BH = self._fire(batch_size, g)
        empty = (~active_BH.any(dim=1)).nonzero().squeeze(1)
        if empty.numel() > 0:
            forced = torch.multinomial(self._forced_choice_H, empty.numel(), replacement=True, generator=g)
            active_BH[empty, forced] = True
        rows, cols = active_BH.nonzero(as_tuple=True)  # row-major, so rows are sorted
        values = torch.rand(cols.numel(), generator=g).mul_(self._magnitudes_H[cols])
        return active_BH, rows, cols, values

    def sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """One batch of activations y, float32 (B, n)."""
        active_BH, _, cols, values = self.sample_codes(batch_size, g)
        counts_B = active_BH.sum(dim=1)
        offsets_B = torch.zeros(batch_size, dtype=torch.long)
        torch.cumsum(counts_B[:-1], dim=0, out=offsets_B[1:])
        y_BN = nnf.embedding_bag(
            cols, self._features_HN, offsets_B, mode="sum", per_sample_weights=values
        )
        if self.cfg.noise_std > 0.0:
            y_BN.add_(torch.randn(y_BN.shape, generator=g), alpha=self.cfg.noise_std)
        return y_BN

    def eval_set(self) -> torch.Tensor:
        """The held-out evaluation set (eval_size, n), fixed by the data seed alone."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, STREAM_EVAL))
        return torch.cat(
            [self.sample(min(8192, self.cfg.eval_size - i), g) for i in range(0, self.cfg.eval_size, 8192)]
        )

    def batches(self, batch_size: int, seed: int):
        """Endless iterator of training batches; the stream is fixed by (data seed, run seed)."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, STREAM_TRAIN, seed))
        while True:
            yield self.sample(batch_size, g)
