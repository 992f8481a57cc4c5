"""Every metric, defined once, as a pure tensor function.

Conventions: dictionaries are (atoms, N) with one direction per row; codes are (B, J).
"""

from __future__ import annotations

import torch

RECOVERY_THRESHOLDS = (0.9, 0.99)


class CodeStats:
    """Streaming reconstruction and sparsity statistics over an eval set fed in chunks.

    Definitions (B samples, N input dims, J latents):
      mse   = sum (z - y)^2 / (B N)                    (the loss's reconstruction term)
      fvu   = sum ||z - y||^2 / sum ||y - mean(y)||^2   (fraction of variance unexplained)
      l1    = sum |c| / (B J)                          (the loss's L1 term, before alpha)
      loss  = mse + alpha * l1
      l1_sum = sum |c| / B                             (L1 per sample, comparable across J)
      l0    = mean number of non-zero latents per sample
      dead  = latents zero on every sample;  alive = J - dead
    Per latent (for the analysis): firing frequency and mean activation over the set.
    """

    def __init__(self, n: int, j: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.n, self.j = n, j
        self.sq_err = torch.zeros((), dtype=torch.float64, device=device)
        self.y_sum_N = torch.zeros(n, dtype=torch.float64, device=device)
        self.y_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.abs_c = torch.zeros((), dtype=torch.float64, device=device)
        self.nnz = torch.zeros((), dtype=torch.float64, device=device)
        self.fires_J = torch.zeros(j, dtype=torch.float64, device=device)
        self.sum_c_J = torch.zeros(j, dtype=torch.float64, device=device)
        self._mask_BJ: torch.Tensor | None = None  # c != 0 of the last chunk, as floats (reused)

    def update(self, y_BN: torch.Tensor, z_BN: torch.Tensor, c_BJ: torch.Tensor) -> None:
        # Per chunk in float32, across chunks in float64. The (B, J) passes are the cost here: a
        # float64 reduction over a float32 (B, J) chunk is many times slower than the float32 one, and a
        # fresh (B, J) mask pays page faults on every chunk, so the firing mask reuses one buffer.
        # Firing counts are exact (float32 counts integers exactly up to 2^24 rows per chunk).
        f64 = torch.float64
        self.count += y_BN.shape[0]
        self.sq_err += torch.linalg.vector_norm(z_BN - y_BN, dtype=f64).square()
        self.y_sum_N += y_BN.sum(dim=0, dtype=f64)
        self.y_sq += torch.linalg.vector_norm(y_BN, dtype=f64).square()
        nonneg = bool(c_BJ.min() >= 0) if c_BJ.numel() else True  # ReLU codes: |c| = c
        self.abs_c += (c_BJ.sum() if nonneg else torch.linalg.vector_norm(c_BJ, ord=1)).double()
        if self._mask_BJ is None or self._mask_BJ.shape != c_BJ.shape or self._mask_BJ.dtype != c_BJ.dtype:
            self._mask_BJ = torch.empty_like(c_BJ)
        fires_J = torch.ne(c_BJ, 0, out=self._mask_BJ).sum(dim=0)
        self.nnz += fires_J.sum().double()
        self.fires_J += fires_J
        self.sum_c_J += c_BJ.sum(dim=0)

    @property
    def ever_active_J(self) -> torch.Tensor:
        """Latents non-zero on at least one sample, (J,) bool."""
        return self.fires_J > 0

    def frequency(self) -> torch.Tensor:
        """Share of samples on which each latent is non-zero, (J,) float64."""
        return self.fires_J / max(self.count, 1)

    def mean_activation(self) -> torch.Tensor:
        """Mean of each latent's activation over all samples, (J,) float64."""
        return self.sum_c_J / max(self.count, 1)

    def results(self, alpha: float = 0.0) -> dict[str, float]:
        b = max(self.count, 1)
        total_var = (self.y_sq - self.y_sum_N.pow(2).sum() / b).clamp_min(1e-30)
        mse_ = (self.sq_err / (b * self.n)).item()
        l1_ = (self.abs_c / (b * self.j)).item()
        dead = int((~self.ever_active_J).sum().item())
        return {
            "loss": mse_ + alpha * l1_,
            "mse": mse_,
            "l1": l1_,
            "l1_sum": (self.abs_c / b).item(),
            "fvu": (self.sq_err / total_var).item(),
            "l0": (self.nnz / b).item(),
            "dead": dead,
            "alive": self.j - dead,
        }


def code_stats(y_BN: torch.Tensor, z_BN: torch.Tensor, c_BJ: torch.Tensor, alpha: float = 0.0) -> dict[str, float]:
    """CodeStats of a single batch."""
    stats = CodeStats(y_BN.shape[1], c_BJ.shape[1], y_BN.device)
    stats.update(y_BN, z_BN, c_BJ)
    return stats.results(alpha)


def cosine_matrix(a_AN: torch.Tensor, b_BN: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every row of a and every row of b, (A, B)."""
    a = a_AN / a_AN.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b_BN / b_BN.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def max_cosine(reference_HN: torch.Tensor, learned_JN: torch.Tensor) -> torch.Tensor:
    """For each reference direction, its best cosine with any learned atom, (H,)."""
    if learned_JN.shape[0] == 0:
        return torch.full((reference_HN.shape[0],), float("nan"))
    return cosine_matrix(reference_HN.float(), learned_JN.float()).max(dim=1).values


def mmcs(reference_HN: torch.Tensor, learned_JN: torch.Tensor) -> float:
    """Mean max cosine similarity: for each reference direction the best learned match, averaged.

    1.0 means every reference direction is matched exactly; invariant to permuting and positively
    rescaling either set. mmcs(F, D) scores recovery of ground truth (true -> learned);
    mmcs(D, F) asks whether the learned atoms are true features (learned -> true); mmcs(D_small,
    D_large) compares two learned dictionaries without ground truth.
    """
    return max_cosine(reference_HN, learned_JN).mean().item()


def share_recovered(reference_HN: torch.Tensor, learned_JN: torch.Tensor, threshold: float) -> float:
    """Share of reference directions whose best learned match has cosine > threshold."""
    return (max_cosine(reference_HN, learned_JN) > threshold).double().mean().item()


def dictionary_metrics(
    features_HN: torch.Tensor, learned_JN: torch.Tensor, alive_J: torch.Tensor
) -> dict[str, float]:
    """Recovery of ground truth by a learned dictionary: MMCS both ways and shares recovered."""
    best_H = max_cosine(features_HN, learned_JN)
    out = {
        "mmcs": best_H.mean().item(),
        "mmcs_learned": mmcs(learned_JN[alive_J], features_HN) if bool(alive_J.any()) else float("nan"),
    }
    for t in RECOVERY_THRESHOLDS:
        out[f"recovered_{round(t * 100)}"] = (best_H > t).double().mean().item()
    return out
