"""The estimators' and the verdict's thresholds: one dataclass, the schema of the report callback's
fields (``conf/config.yaml`` hydra.callbacks.report, checked against it by tests/unit/test_analysis_settings.py),
of ``python -m sae_sweep.analyze`` flags and of the settings recorded in estimates.json. A leaf.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AnalysisSettings:
    """Estimator thresholds (defaults justified in estimate.py and docs/calibration.md)."""

    min_frequency: float = 0.0
    """A latent is alive when it fires on more than this share of the eval samples (0 = ever fires)."""
    reproduce_cos: float = 0.9
    """An alive latent is reproduced when another seed's dictionary at the same (alpha, J) has an alive atom
    within this cosine (0.8-0.95 give the same calibration estimates)."""
    min_reproduced_share: float = 0.7
    """Dead-latent estimate only for alphas whose best share of reproduced latents reaches this (calibration:
    0.91-1.00 at J = h where trained, at most 0.27 where undertrained; any value in 0-0.9 gives its estimates)."""
    min_dead_share: float = 0.05
    """One seed only (firing-only count): estimate only for alphas whose largest J has this share dead."""
    basin_tolerance: float = 0.02
    """A cell is in the loss basin when its loss is within this relative distance of the best J's (per alpha,
    h is the smallest J in the basin; chosen on the generalization study's tuning set, docs/generalization.md)."""
    min_agreement: float = 0.9
    """The agreement estimate needs a J whose worst MMCS against every larger dictionary reaches this."""
    agreement_plateau: float = 0.005
    """Agreement: h is the smallest J whose worst agreement is within this of the best J's (not the argmax)."""
    distinct_gain: float = 0.5
    """Dead latents: h is the count of distinct reproduced latents at the largest J reached while each added
    latent still adds at least this many (1: every latent a new feature; 0: none; chosen on aa-ad, round 8)."""
    min_converged_share: float = 0.5
    """A working alpha needs this share of its runs converged; the verdict needs it over the working alphas."""
    alpha_share_margin: float = 0.05
    """A working alpha's best reproduced share is within this of the most reproducible alpha's."""
    max_spread: float = 0.1
    """TRUSTED needs at least two signals' values within this relative distance of their median."""
    min_reproduced_at_h: float = 0.9
    """TRUSTED needs this share of latents reproduced by another seed at the grid J nearest h-hat (chosen on the
    generalization study's tuning set: correct answers 0.94-1.00, the one false TRUSTED 0.84)."""
    min_converged_below: float = 0.9
    """TRUSTED needs this share of runs converged at the excluded alpha next below the working ones, when one
    was swept: an exclusion of unconverged runs proves nothing (verdict.py; chosen on the generalization
    study's tuning set, docs/generalization.md)."""
