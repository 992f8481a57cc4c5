"""Which alphas can be believed, and whether the estimate of h can: pure functions over a dataset's cells.

**Working alphas** (:func:`select_alphas`), decided before any signal pools them, from evidence that
needs no ground truth:

1. *converged*: at least ``min_converged_share`` of the alpha's runs met the convergence rule
   (``sae_sweep/convergence.py``; sweeps recorded before it existed count as unknown and pass);
2. *reproducible* (two or more seeds): the alpha's best share of latents reproduced by another seed,
   over J, reaches ``min_reproduced_share``: SAEs that are not trained to a stable dictionary, or an
   alpha so small that codes stay dense, disagree from seed to seed;
3. *as reproducible as the best alpha*: that best share is within ``alpha_share_margin`` of the most
   reproducible alpha's. An alpha that merges features (too large) or blends them (too small) still
   reproduces across seeds, but less than an alpha in the working band, where the dictionary is the
   true features and both seeds find them (the issue that motivated this: on every setting the most
   reproducible alpha gave h).

**Verdict** (:func:`verdict`): TRUSTED when every check below holds, else NOT TRUSTED with each failed
check's reason and remedy:

- at least one working alpha; two or more seeds;
- converged: at least ``min_converged_share`` of the working alphas' runs;
- at least two signals gave a value, and at least two values lie within ``max_spread`` (relative) of
  their median h-hat: the three signals read different properties of the grid (reproducibility,
  losses, agreement between sizes) and each has its own way of failing (measured in
  docs/generalization.md: dead latents overshoot where surplus latents stay reproducible, agreement
  undershoots under magnitude decay, the basin follows the loss curve's curvature), so two that agree
  are evidence and a third far off is reported as dissent, not a veto. With two values, both must agree;
- not at the grid's edge: h-hat below the grid's largest J, and above its smallest;
- resolved: the grid's J on either side of h-hat are within a factor ``1 + max_spread`` of it (plus 0.01
  for J rounded to integers). A signal reports a grid point, the one at or next to h: on a coarser grid it
  can be off by more than ``max_spread`` even when every signal agrees (h = 48 between J = 45 and 54: 54 is
  12.5 % off). A factor-2 grid needs three rounds of ``python -m sae_sweep.refine`` (2^(1/8) = 1.09);
- reproducible at h-hat: the reproduced share at the grid J nearest h-hat reaches
  ``min_reproduced_at_h`` at some working alpha. An SAE of h-hat latents trained to the true features
  finds nearly all of them on every seed (0.94-1.00 on the generalization study's correct answers);
  where the budget left the rarer features unlearnt, two seeds learn different blends of them and the
  share falls (0.84 on setting f, whose three signals all read low: docs/generalization.md, round 4).
  The remedy depends on the runs there: unconverged, train longer; converged, training longer was
  measured not to help (f at 12 M samples with the convergence rule off: the same estimates), so the
  reason says so rather than send the user to a larger budget.
- the band's lower edge judged: the alpha next below the working ones, when one was swept and excluded,
  had at least ``min_converged_below`` of its runs converged at its most reproducible J (where its
  exclusion was measured). A larger alpha can merge features that
  a smaller one resolves, and both seeds merge them alike, so the merging alpha is the most
  reproducible, its signals agree, and they agree on too few features (setting y of
  docs/generalization.md: alpha 0.3 TRUSTED at 166 for h = 296, while alpha 0.1, excluded as less
  reproducible, had half of its runs stopped unconverged at the sample cap). An exclusion is evidence
  only when the excluded alpha's runs finished training, or when its SAEs are far from reproducible
  (best share under the floor ``min_reproduced_share``, whatever excluded it first: codes too dense for
  two seeds to agree, as alpha 0.1 on setting u, converged at every J up to 128 and at most 12 %
  reproduced; training to convergence moved y's alpha 0.1 from 83 % to 85 %, not across a floor);
  otherwise the remedy is its budget.
- the band's lower edge agrees: that alpha, when converged and excluded only as out of band (it learns
  a dictionary seeds reproduce, less often than the band's), does not count more features: the median of
  its own dead-latent and agreement signals (``below_values``, read on its cells alone; ``BELOW_SIGNALS``)
  is at most ``max_spread`` above h-hat.
  Which alpha is right cannot be told without ground truth, so a count that depends on alpha this much
  is not one to stand behind (setting y, alpha 0.1 trained to convergence: 256 and 181 against the
  band's 166, h = 296; setting z passes: 256 and 128, median 192, against the band's right 181).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

TRUSTED, NOT_TRUSTED = "TRUSTED", "NOT TRUSTED"
UNCONVERGED, NOT_REPRODUCIBLE, OUT_OF_BAND = "unconverged", "not reproducible", "out of band"  # why an alpha is excluded
GRID_ROUNDING = 0.01  # slack on the grid's resolution for J rounded to integers (54 / 49 = 1.102)


@dataclass
class AlphaSelection:
    used: list[float]
    excluded: dict[float, str]  # alpha -> why
    best: float | None  # the most reproducible working alpha (None without a reproduced count)
    evidence: pd.DataFrame  # per alpha: converged share, best reproduced share and its J, fvu at the largest J

    def as_dict(self) -> dict[str, Any]:
        return {"used": self.used, "excluded": {f"{a:g}": r for a, r in self.excluded.items()}, "best": self.best}


def alpha_evidence(cells: pd.DataFrame) -> pd.DataFrame:
    """Per alpha: runs, converged share (NaN when unrecorded), best reproduced share over J and its J."""
    rows = []
    for alpha, g in cells.groupby("alpha"):
        conv = g["converged"] if "converged" in g.columns else pd.Series(dtype=object)
        known = conv.dropna()
        row: dict[str, Any] = {"alpha": float(alpha), "runs": len(g),
                               "converged_share": float(known.astype(bool).mean()) if len(known) else math.nan,
                               "best_reproduced_share": math.nan, "best_reproduced_j": math.nan}
        if "reproduced" in g.columns and g["reproduced"].notna().any() and g["seed"].nunique() >= 2:
            m = g.dropna(subset=["reproduced"]).groupby("dict_size")["reproduced"].mean()
            share = m / m.index.to_numpy(dtype=float)
            row["best_reproduced_share"], row["best_reproduced_j"] = float(share.max()), float(share.idxmax())
        if "fvu" in g.columns:
            row["fvu_at_largest_j"] = float(g[g["dict_size"] == g["dict_size"].max()]["fvu"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def select_alphas(cells: pd.DataFrame, *, min_converged_share: float, min_reproduced_share: float,
                  alpha_share_margin: float) -> AlphaSelection:
    """The working alphas of one dataset (module docstring); every alpha is used or excluded with a reason."""
    ev = alpha_evidence(cells)
    excluded: dict[float, str] = {}
    kind: dict[float, str] = {}  # alpha -> which rule excluded it (UNCONVERGED, NOT_REPRODUCIBLE, OUT_OF_BAND)
    shares = ev["best_reproduced_share"].dropna()
    top = float(shares.max()) if len(shares) else math.nan
    top_alpha = float(ev.loc[ev["best_reproduced_share"].idxmax(), "alpha"]) if len(shares) else None
    for r in ev.itertuples():
        if math.isfinite(r.converged_share) and r.converged_share < min_converged_share:
            kind[r.alpha] = UNCONVERGED
            excluded[r.alpha] = (f"unconverged: {r.converged_share:.0%} of its runs converged "
                                 f"(needs {min_converged_share:.0%})")
        elif math.isfinite(r.best_reproduced_share) and r.best_reproduced_share < min_reproduced_share:
            kind[r.alpha] = NOT_REPRODUCIBLE
            excluded[r.alpha] = (f"not reproducible: at most {r.best_reproduced_share:.0%} of latents reproduced "
                                 f"by another seed (J = {r.best_reproduced_j:.0f}; needs {min_reproduced_share:.0%})")
        elif math.isfinite(r.best_reproduced_share) and r.best_reproduced_share < top - alpha_share_margin:
            kind[r.alpha] = OUT_OF_BAND
            excluded[r.alpha] = (f"out of band: best reproduced share {r.best_reproduced_share:.0%} against "
                                 f"{top:.0%} at alpha {top_alpha:g} (margin {alpha_share_margin:.0%})")
    used = [float(a) for a in ev["alpha"] if float(a) not in excluded]
    best = top_alpha if top_alpha is not None and top_alpha in used else None
    ev["used"] = [float(a) not in excluded for a in ev["alpha"]]
    ev["reason"] = [excluded.get(float(a), "") for a in ev["alpha"]]
    ev["excluded_as"] = [kind.get(float(a), "") for a in ev["alpha"]]
    # below the floor whatever else failed first (unknown without seeds: not below it)
    ev["below_floor"] = ev["best_reproduced_share"].to_numpy(dtype=float) < min_reproduced_share
    return AlphaSelection(used, excluded, best, ev)


@dataclass
class Verdict:
    trusted: bool
    reasons: list[str] = field(default_factory=list)  # each failed check: what and the remedy
    checks: dict[str, Any] = field(default_factory=dict)  # the measured numbers behind it

    @property
    def wants_refinement(self) -> bool:
        """NOT TRUSTED for a reason more J would answer: a coarse grid at h-hat or h-hat at its edge."""
        return bool(self.checks.get("refine"))

    @property
    def label(self) -> str:
        return TRUSTED if self.trusted else NOT_TRUSTED

    def line(self) -> str:
        if not self.trusted:
            return f"{self.label}: " + "; ".join(self.reasons)
        dissent = self.checks.get("dissent") or {}
        return self.label + "".join(f" ({k} {v:.0f} dissents)" for k, v in dissent.items())

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.label, "reasons": self.reasons, "checks": self.checks}


def _runs_near(cells: pd.DataFrame, alphas: Sequence[float], h: float, column: str) -> pd.DataFrame | None:
    """``alphas``' runs with a ``column`` value at the grid J nearest h (log scale); None if there are none."""
    if column not in cells.columns or not math.isfinite(h) or h <= 0:
        return None
    c = cells[cells["alpha"].isin(alphas)].dropna(subset=[column])
    if c.empty:
        return None
    sizes = np.array(sorted(c["dict_size"].unique()), dtype=float)
    return c[c["dict_size"] == sizes[np.abs(np.log(sizes) - math.log(h)).argmin()]]


def reproduced_share_near(cells: pd.DataFrame, alphas: Sequence[float], h: float) -> float:
    """The highest reproduced share, over ``alphas``, at the grid J nearest h (log scale); NaN if unknown."""
    at = _runs_near(cells, alphas, h, "reproduced")
    if at is None:
        return math.nan
    return float((at.groupby("alpha")["reproduced"].mean() / at["dict_size"].iloc[0]).max())


def converged_share_near(cells: pd.DataFrame, alphas: Sequence[float], h: float) -> float:
    """The share of ``alphas``' runs at the grid J nearest h that met the convergence rule; NaN if unrecorded."""
    at = _runs_near(cells, alphas, h, "converged")
    return math.nan if at is None else float(at["converged"].astype(bool).mean())


# The signals that read the alpha below the band: its loss basin is left out, because at the smallest alphas the
# loss keeps falling with J (the basin read 256 on all seven tuning settings re-run there, h from 96 to 296).
BELOW_SIGNALS = ("dead_latents", "dictionary_agreement")


def alpha_below(selection: AlphaSelection, cells: pd.DataFrame) -> dict[str, Any] | None:
    """The excluded alpha next below every working alpha: ``alpha``, why it was excluded (``excluded_as``),
    whether its best reproduced share is under the floor (``below_floor``), the J of that best share
    (``best_j``) and the share of its runs there that converged (``converged_at_best``, NaN when
    unrecorded); None when no alpha below the working ones was swept, or none works."""
    if not selection.used:
        return None
    below = [a for a in selection.excluded if a < min(selection.used)]
    if not below:
        return None
    nearest = max(below)
    ev = selection.evidence
    row = ev[np.isclose(ev["alpha"].to_numpy(dtype=float), nearest)].iloc[0]
    best_j = float(row["best_reproduced_j"])
    at = cells[np.isclose(cells["alpha"].to_numpy(dtype=float), nearest) & (cells["dict_size"] == best_j)]
    known = at["converged"].dropna() if "converged" in at.columns else pd.Series(dtype=object)
    return {"alpha": nearest, "excluded_as": str(row["excluded_as"]), "below_floor": bool(row["below_floor"]),
            "best_j": best_j, "converged_at_best": float(known.astype(bool).mean()) if len(known) else math.nan}


def verdict(cells: pd.DataFrame, selection: AlphaSelection, values: dict[str, float | None], *,
            min_converged_share: float, min_reproduced_at_h: float, max_spread: float,
            min_converged_below: float, below_values: dict[str, float | None] | None = None) -> Verdict:
    """TRUSTED or NOT TRUSTED for one dataset, from its cells, working alphas and each signal's value."""
    reasons: list[str] = []
    checks: dict[str, Any] = {"alphas_used": selection.used,
                              "alphas_excluded": {f"{a:g}": r for a, r in selection.excluded.items()}}
    seeds = int(cells["seed"].nunique())
    checks["seeds"] = seeds
    if seeds < 2:
        reasons.append("one seed: reproducibility cannot be measured (remedy: sweep seed=0,1,2)")
    if not selection.used:
        why = "; ".join(f"alpha {a:g} {r}" for a, r in selection.excluded.items())
        reasons.append(f"no working alpha ({why}) (remedy: train longer, or sweep alphas around the least bad one)")
        return Verdict(False, reasons, checks)
    used = cells[cells["alpha"].isin(selection.used)]
    if "converged" in used.columns and used["converged"].notna().any():
        share = float(used["converged"].dropna().astype(bool).mean())
        checks["converged_share"] = share
        if share < min_converged_share:
            reasons.append(f"only {share:.0%} of the working alphas' runs converged (remedy: raise train.num_samples)")
    given = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    checks["signals"] = given
    if len(given) < 2:
        missing = ", ".join(k for k in values if k not in given) or "all"
        reasons.append(f"fewer than two signals gave a value (none from {missing}) "
                       "(remedy: widen the J grid, more seeds, or train longer)")
        return Verdict(False, reasons, checks)
    mid = float(np.median(list(given.values())))
    off = {k: abs(v - mid) / mid for k, v in given.items()}
    checks["consensus"], checks["spread"] = mid, max(off.values())
    agreeing = [k for k, d in off.items() if d <= max_spread]
    checks["dissent"] = {k: given[k] for k, d in off.items() if d > max_spread}
    if len(agreeing) < 2:
        far = ", ".join(f"{k} {v:.0f}" for k, v in given.items())
        reasons.append(f"no two signals agree within {max_spread:.0%} of their median {mid:.0f} ({far}) "
                       "(remedy: refine the J grid, train longer, or more seeds)")
    j_min, j_max = float(cells["dict_size"].min()), float(cells["dict_size"].max())
    if mid >= j_max:
        reasons.append(f"h-hat {mid:.0f} is at the grid's largest J {j_max:.0f} (remedy: widen the J grid upwards)")
    elif mid <= j_min:
        reasons.append(f"h-hat {mid:.0f} is at the grid's smallest J {j_min:.0f} (remedy: widen the J grid downwards)")
    else:
        sizes = sorted(float(j) for j in cells["dict_size"].unique())
        below = max(j for j in sizes if j < mid * (1 - 1e-9)) if any(j < mid * (1 - 1e-9) for j in sizes) else mid
        above = min(j for j in sizes if j > mid * (1 + 1e-9)) if any(j > mid * (1 + 1e-9) for j in sizes) else mid
        step = max(mid / below, above / mid)
        checks["grid_step_at_h"] = step
        allowed = 1 + max_spread + GRID_ROUNDING
        if step > allowed:
            checks["refine"] = True
            reasons.append(f"the J grid is too coarse at h-hat {mid:.0f} (neighbours {below:.0f} and {above:.0f}: "
                           f"a factor {step:.3g}, allowed {allowed:.3g}) (remedy: python -m sae_sweep.refine "
                           "<sweep dir> --rounds 3)")
    rep = reproduced_share_near(cells, selection.used, mid)
    checks["reproduced_share_at_h"] = rep
    if math.isfinite(rep) and rep < min_reproduced_at_h:
        conv = converged_share_near(cells, selection.used, mid)
        checks["converged_share_at_h"] = conv
        if math.isfinite(conv) and conv >= min_converged_share:
            remedy = ("the runs there converged, so a larger train.num_samples alone does not help (setting f of "
                      "docs/generalization.md: 3x the samples changed no estimate); more seeds, or take h-hat as "
                      "unresolved at this superposition")
        else:
            remedy = "raise train.num_samples, or more seeds"
        reasons.append(f"at J near h-hat only {rep:.0%} of latents are reproduced by another seed "
                       f"(needs {min_reproduced_at_h:.0%}: the rarer features are not learnt the same way twice) "
                       f"(remedy: {remedy})")
    edge = alpha_below(selection, cells)
    if edge is not None:
        checks["alpha_below"] = edge
        alpha, share = edge["alpha"], edge["converged_at_best"]
        if not edge["below_floor"] and math.isfinite(share) and share < min_converged_below:
            reasons.append(f"alpha {alpha:g}, next below the working alphas, was excluded "
                           f"({selection.excluded[alpha]}) with only {share:.0%} of its runs at J = "
                           f"{edge['best_j']:.0f} (its most reproducible) converged (needs {min_converged_below:.0%}): "
                           f"a smaller alpha can resolve features that alpha {min(selection.used):g} merges, and "
                           "unconverged runs cannot show it (remedy: sweep again with a larger train.num_samples, "
                           f"e.g. 3x, so that alpha {alpha:g} converges)")
        elif edge["excluded_as"] == OUT_OF_BAND and below_values and "consensus" in checks:  # converged, above the floor
            given_below = {k: v for k, v in below_values.items()
                           if k in BELOW_SIGNALS and v is not None and math.isfinite(v)}
            if given_below:
                below_h = float(np.median(list(given_below.values())))
                edge["h_hat"] = below_h
                if below_h > checks["consensus"] * (1 + max_spread):
                    read = ", ".join(f"{k} {v:.0f}" for k, v in given_below.items())
                    reasons.append(f"alpha {alpha:g}, next below the working alphas and converged, counts more: h-hat "
                                   f"{below_h:.0f} ({read}) against {checks['consensus']:.0f}, more than "
                                   f"{max_spread:.0%} apart: a smaller alpha resolves features a larger one can merge "
                                   "alike on every seed, so the count depends on alpha (remedy: none within this "
                                   f"sweep; take h as between {checks['consensus']:.0f} and {below_h:.0f})")
    return Verdict(not reasons, reasons, checks)
