"""When has an SAE converged? The stopping rule each member of a pack applies at every evaluation.

At evaluation t (every ``train.eval_every`` samples, on the fixed held-out set) a member has

    loss_change = |L_t - L_{t-1}| / L_t            per million samples of the window
    atom_drift  = sum_j f_j (1 - cos(d_j at t, d_j at t-1)) / sum_j f_j             per million samples

(``d_j``: decoder atom j, unit norm; ``f_j``: its firing frequency on the eval set at t, so dead latents,
which no gradient moves, weigh nothing and rarely firing surplus latents little). Both are rates per million training samples, so the tolerances
mean the same whatever ``eval_every`` is. A member is *converged* once both stay below their
tolerances (``train.converge_loss_rtol``, ``train.converge_drift``) for ``train.converge_patience``
consecutive evaluations: the loss alone flattens while atoms still rotate between correlated
features, and the atoms alone settle early for dictionaries whose surplus latents have died.
With ``train.converge=true`` a converged member stops (status completed); either way the record keeps
``converged`` and the last window's two numbers, and a run that hit ``train.num_samples`` first is
recorded ``converged: false``. Plain tensor code: no Hydra, Optuna or W&B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PER = 1_000_000  # the rates are per this many training samples


@dataclass(frozen=True)
class ConvergenceRule:
    loss_rtol: float
    """Largest relative change of the eval loss per million samples that counts as flat."""
    drift: float
    """Largest frequency-weighted mean (1 - cos) of decoder atoms per million samples that counts as settled."""
    patience: int
    """Consecutive evaluations both must hold for."""


class ConvergenceTracker:
    """Per member: the last evaluation's loss and atoms, and how many evaluations in a row were flat."""

    def __init__(self, rule: ConvergenceRule, members: int):
        self.rule = rule
        self.prev: list[tuple[int, float, torch.Tensor] | None] = [None] * members  # (samples, loss, atoms)
        self.streak = [0] * members

    def update(self, m: int, samples: int, loss: float, atoms_JN: torch.Tensor,
               frequency_J: torch.Tensor) -> dict[str, float]:
        """Record member m's evaluation at ``samples``; returns its ``loss_change`` and ``atom_drift``
        (NaN at the first evaluation) and whether it is now converged (1.0 or 0.0)."""
        atoms_JN = atoms_JN.detach().float().clone()
        prev, self.prev[m] = self.prev[m], (samples, loss, atoms_JN)
        if prev is None or samples <= prev[0]:
            self.streak[m] = 0
            return {"loss_change": math.nan, "atom_drift": math.nan, "converged": 0.0}
        scale = PER / (samples - prev[0])
        loss_change = abs(loss - prev[1]) / max(abs(loss), 1e-30) * scale
        cos_J = (atoms_JN * prev[2]).sum(dim=1)
        w_J = frequency_J.to(atoms_JN.device, torch.float32)
        total = float(w_J.sum())
        drift = float(((1.0 - cos_J) * w_J).sum()) / total * scale if total > 0 else 0.0
        flat = math.isfinite(loss_change) and loss_change <= self.rule.loss_rtol and drift <= self.rule.drift
        self.streak[m] = self.streak[m] + 1 if flat else 0
        return {"loss_change": loss_change, "atom_drift": drift, "converged": float(self.converged(m))}

    def converged(self, m: int) -> bool:
        return self.streak[m] >= self.rule.patience
