"""Three estimates of the number of features h, as pure functions over a sweep's cells.

A *cell* is one finished run: its ``alpha``, ``dict_size`` (J) and ``seed`` plus final metrics. Each
estimator works on the seed-averaged cells for its point estimate and on resampled seeds for its
spread (:func:`bootstrap`), and returns an :class:`Estimate` with the evidence behind it.

1. **Dead latents** (:func:`estimate_dead_latents`). While J < h every latent is used; once J > h
   latents that do no work appear. A latent counts as *alive* when it fires on more than
   ``min_frequency`` of the eval samples (default 0: the report's "never fires") and, with two or
   more seeds, only when it is also *reproduced*: another seed's dictionary at the same (alpha, J)
   has an alive atom within cosine ``reproduce_cos`` of it. Beyond h the surplus latents die, settle
   as weak seed-specific splits and blends, or (under strong superposition, docs/generalization.md
   round 8) become *twins*: a second atom within ``reproduce_cos`` of one the dictionary already has,
   learned by every seed, so they count as reproduced. Twins (transitively) count once: the *distinct
   reproduced* count. It grows about one per added latent while J < h (less where seeds learn
   different blends of alike features) and levels off past h, where added latents are twins, dead or
   seed-specific. Per alpha, h' = that count at the largest J reached with a gain of at least
   ``min_gain`` (0.5) distinct latents per added latent (:func:`distinct_knees`): a count, not a grid
   point. An alpha whose best reproduced share is below ``min_reproduced_share``, or still gaining at the
   grid's largest J, gives no estimate. Pooled: the *most* over alphas, as an alpha that merges
   features counts fewer and seeds rarely agree on a spurious direction (the earlier rules read the
   share of reproduced latents, whose plateau ran from well below h to 1.1-1.3 h on aa-ad; round 8).
   Each seed's count is its mean over the other seeds of the sweep (one comparison each), so the
   bootstrap resamples per-seed counts, not the pairing.
2. **Loss basin** (:func:`estimate_loss_basin`). A dictionary at least as large as h represents the
   data as well as any larger one, so its loss stops changing with J: at each alpha let L*(alpha) be
   the lowest total loss over J; the cell (alpha, J) is *in the basin* when its loss is within
   ``tolerance`` (relative) of L*(alpha). Per alpha, h' = the smallest J in the basin; pooled: the
   median over alphas, like the other two signals. The loss approaches L* gradually (the last features
   learned are the rarest or weakest), so the smallest J in the basin is where that approach crosses
   ``tolerance``: a point of the loss-vs-J curve, which refinement locates more precisely but does
   not move. The first rule (4 %, and the smallest J in the basin for half of the alphas) fitted the
   factor-2 grids it was tuned on, where rounding up to the next grid point hid that the 4 % crossing
   lies at 0.7-0.8 h; on refined grids it drifted down with every round (docs/generalization.md).
   The total loss is what the SAE optimises; the reconstruction and L1 terms are shown separately in
   the figure (the combined "stickiness" number of the original report was, by its authors' account,
   hard to read).
3. **Dictionary agreement** (:func:`estimate_agreement`). At one alpha, A[J, J'] is the MMCS of
   dictionary J's atoms against dictionary J', each atom weighted by its firing frequency (atoms that
   never fire carry no weight). A right-sized dictionary holds the true features, and every larger
   dictionary holds them too, so its row is high across all larger J'; a smaller one learned blends
   and a larger one learned split or spare atoms that other sizes do not share. h' is the smallest J
   whose worst agreement with any larger dictionary is within ``plateau`` of the highest (provided
   that reaches ``min_agreement``): above h all sizes agree almost equally well, and an argmax there
   picks whichever is noisiest. No ground truth is used.

Every estimator sees only the cells of the working alphas (``verdict.select_alphas``). All thresholds
are parameters; their defaults are in ``settings.AnalysisSettings``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

SIGNALS = ("dead_latents", "loss_basin", "dictionary_agreement")


@dataclass
class Estimate:
    """An estimate of h from one signal."""

    signal: str
    value: float | None  # None: this sweep cannot tell (see note)
    interval: tuple[float, float] | None = None  # 90% bootstrap interval over seeds
    per_seed: dict[int, float | None] = field(default_factory=dict)
    per_alpha: dict[float, float | None] = field(default_factory=dict)
    note: str = ""
    evidence: pd.DataFrame | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "value": self.value,
                "interval": list(self.interval) if self.interval else None,
                "per_seed": {str(k): v for k, v in self.per_seed.items()},
                "per_alpha": {f"{k:g}": v for k, v in self.per_alpha.items()}, "note": self.note}


# --- shared helpers ------------------------------------------------------------------------------
def seed_mean(cells: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Cells averaged over seeds: one row per (alpha, dict_size)."""
    cols = [c for c in columns if c in cells.columns]
    return cells.groupby(["alpha", "dict_size"], as_index=False)[cols].mean()


def _median(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def bootstrap(
    seeds: Sequence[int], estimate: Callable[[Sequence[int]], float | None], *, n_boot: int = 400,
    level: float = 0.9, rng_seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of ``estimate(resampled seeds)`` over seeds drawn with replacement.

    None with fewer than two seeds or when fewer than half the resamples give an estimate.
    """
    seeds = sorted(set(seeds))
    if len(seeds) < 2:
        return None
    rng = np.random.default_rng(rng_seed)
    cache: dict[tuple[int, ...], float | None] = {}
    values = []
    for _ in range(n_boot):
        draw = tuple(sorted(rng.choice(seeds, size=len(seeds), replace=True).tolist()))
        if draw not in cache:
            cache[draw] = estimate(list(draw))
        if cache[draw] is not None and math.isfinite(cache[draw]):
            values.append(cache[draw])
    if len(values) < n_boot / 2:
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _with_seeds(cells: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """The cells of a (re)sampled list of seeds; a seed drawn twice counts twice in the means."""
    return pd.concat([cells[cells["seed"] == s] for s in seeds], ignore_index=True)


# --- 1. dead latents -----------------------------------------------------------------------------
def hinge_breakpoint(j: np.ndarray, alive: np.ndarray) -> float:
    """Least-squares hinge in log2 coordinates: alive = J up to h', then slope s in [0, 1]; returns h'."""
    x, y = np.log2(j.astype(float)), np.log2(np.maximum(alive.astype(float), 1.0))
    best = (math.inf, float(j.max()))
    for b in np.linspace(x.max(), x.min(), 241):  # descending: a tie (no bend at all) goes to the largest J
        above = x > b
        resid_below = y[~above] - x[~above]
        dx, dy = x[above] - b, y[above] - b
        s = float(np.clip((dx @ dy) / (dx @ dx), 0.0, 1.0)) if above.any() and (dx @ dx) > 0 else 1.0
        sse = float(resid_below @ resid_below + ((dy - s * dx) @ (dy - s * dx)))
        if sse < best[0] - 1e-12:
            best = (sse, float(2.0**b))
    return best[1]


def _dead_per_alpha(cells: pd.DataFrame, min_dead_share: float) -> dict[float, float | None]:
    """Firing-only alive counts: per alpha, the hinge's breakpoint (None without enough dead latents)."""
    out: dict[float, float | None] = {}
    for alpha, g in seed_mean(cells, ["alive"]).groupby("alpha"):
        g = g.sort_values("dict_size")
        j, alive = g["dict_size"].to_numpy(), g["alive"].to_numpy()
        if len(g) < 3 or (j[-1] - alive[-1]) / j[-1] < min_dead_share:
            out[float(alpha)] = None
        else:
            out[float(alpha)] = hinge_breakpoint(j, alive)
    return out


def best_match_cos(atoms_AN: np.ndarray, others_BN: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """For each of A's atoms, its highest cosine with any of B's atoms (unit rows; signed), shape (A,).

    -inf for every atom when B is empty. A latent counts as reproduced when this reaches ``reproduce_cos``.
    """
    if len(others_BN) == 0:
        return np.full(len(atoms_AN), -np.inf)
    parts = [(atoms_AN[start:start + chunk] @ others_BN.T).max(axis=1)  # (chunk, B) at a time: J x J can be large
             for start in range(0, len(atoms_AN), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def reproduced_share(cells: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged cells with ``reproduced_share`` = reproduced latents / J."""
    m = seed_mean(cells, ["reproduced", "distinct"])
    m["reproduced_share"] = m["reproduced"] / m["dict_size"]
    return m


def plateau_start(values: np.ndarray, tolerance: float) -> int:
    """Index of the first value within ``tolerance`` of the largest: the start of a plateau, not its
    noisiest point (an argmax on a plateau of near-equal values picks any of them)."""
    return int(np.flatnonzero(values >= values.max() - tolerance)[0])


def twin_pairs(atoms_AN: np.ndarray, min_cos: float, *, chunk: int = 2048) -> np.ndarray:
    """The pairs (i, j, cosine), i < j, of one dictionary's unit atoms whose cosine reaches ``min_cos``:
    shape (P, 3), float. Twins: one direction learned twice (a dictionary larger than the data needs)."""
    parts = []
    for start in range(0, len(atoms_AN), chunk):
        cos = atoms_AN[start:start + chunk] @ atoms_AN.T
        i, j = np.nonzero(cos >= min_cos)
        keep = j > i + start
        parts.append(np.column_stack([i[keep] + start, j[keep], cos[i[keep], j[keep]]]))
    return np.concatenate(parts) if parts else np.zeros((0, 3))


def twin_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 of the groups of ``n`` atoms joined by ``pairs`` (shape (P, 2): atom indices whose
    cosine reaches the criterion), transitively: union-find. An atom in no pair is a group of its own."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(n)], dtype=int)
    return np.unique(roots, return_inverse=True)[1] if n else roots


def distinct_reproduced(labels: np.ndarray, best: np.ndarray, min_cos: float) -> int:
    """How many groups of twin atoms (``labels``, :func:`twin_groups`) have a member that another seed's
    dictionary reproduces (its best cosine there, ``best``, reaches ``min_cos``)."""
    return int(len(np.unique(labels[best >= min_cos])))


def distinct_knees(cells: pd.DataFrame, min_share: float, min_gain: float) -> dict[float, tuple[float, float] | None]:
    """Distinct reproduced latents (module docstring, 1): per alpha, (J, count) at the largest J reached
    with a gain of at least ``min_gain`` new distinct latents per added latent (None: share too low, or
    still gaining at the grid's largest J). Without a ``distinct`` column, the reproduced count."""
    out: dict[float, tuple[float, float] | None] = {}
    column = "distinct" if "distinct" in cells.columns and cells["distinct"].notna().all() else "reproduced"
    for alpha, g in reproduced_share(cells).groupby("alpha"):
        g = g.sort_values("dict_size")
        j, count = g["dict_size"].to_numpy(float), g[column].to_numpy(float)
        gaining = np.flatnonzero(np.diff(count) / np.diff(j) >= min_gain) + 1 if len(g) > 1 else np.zeros(0, int)
        k = int(gaining[-1]) if len(gaining) else 0
        ok = len(g) >= 3 and g["reproduced_share"].max() >= min_share and k < len(g) - 1
        out[float(alpha)] = (float(j[k]), float(count[k])) if ok else None
    return out


def _distinct_per_alpha(cells: pd.DataFrame, min_share: float, min_gain: float) -> dict[float, float | None]:
    return {a: (v[1] if v else None) for a, v in distinct_knees(cells, min_share, min_gain).items()}


def _max(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(max(finite)) if finite else None


def _reproduced_cells(cells: pd.DataFrame) -> pd.DataFrame | None:
    """The cells that carry a reproduced count, when they span two or more seeds; else None."""
    if "reproduced" not in cells.columns:
        return None
    rep = cells.dropna(subset=["reproduced"])
    return rep if rep["seed"].nunique() >= 2 else None


def estimate_dead_latents(cells: pd.DataFrame, *, min_dead_share: float = 0.05,
                          min_reproduced_share: float = 0.7, min_gain: float = 0.5) -> Estimate:
    """Dead-latent estimate of h (module docstring, 1).

    ``cells`` needs alpha, dict_size, seed, alive; with a ``reproduced`` column (alive latents matched
    in another seed's dictionary; NaN where unknown) and two or more seeds it uses the reproduced latents,
    counted as ``distinct`` groups of twins where that column is there (report.with_reproduced).
    """
    firing = _median(list(_dead_per_alpha(cells, min_dead_share).values()))
    rep = _reproduced_cells(cells)
    if rep is not None:
        data = rep

        def per_alpha_of(c: pd.DataFrame) -> dict[float, float | None]:
            return _distinct_per_alpha(c, min_reproduced_share, min_gain)
    else:
        data = cells

        def per_alpha_of(c: pd.DataFrame) -> dict[float, float | None]:
            return _dead_per_alpha(c, min_dead_share)

    # Reproduced: the most any working alpha counts (an alpha that merges features counts fewer, and the
    # seeds rarely agree on a spurious direction); firing-only: the median, as the other signals.
    pool = _max if rep is not None else _median

    def pooled(seeds: Sequence[int]) -> float | None:
        return pool(list(per_alpha_of(_with_seeds(data, seeds)).values()))

    seeds = sorted(data["seed"].unique().tolist())
    per_alpha = per_alpha_of(data)
    value = pool(list(per_alpha.values()))
    j_max = int(data["dict_size"].max())
    firing_text = f"{firing:.0f}" if firing is not None else "no bend in the grid"
    if rep is not None:
        evidence = seed_mean(cells, ["alive", "dead"]).merge(
            reproduced_share(rep), on=["alpha", "dict_size"], how="left")
        if value is None:
            best = evidence.loc[evidence["reproduced_share"].idxmax()]
            note = (f"no alpha's count of distinct reproduced latents levels off inside the grid with a share of "
                    f"{min_reproduced_share:.0%} or more (best share: {best['reproduced_share']:.0%} at alpha "
                    f"{best['alpha']:g}, J = {best['dict_size']:.0f}): still gaining at the largest J says h is at "
                    f"least about {j_max}, a low share that the seeds disagree (undertrained SAEs)")
        else:
            note = (f"alive = firing and reproduced by another seed, twins (cosine >= reproduce_cos within one "
                    f"dictionary) counted once; the most over alphas; firing alone: {firing_text} (an upper bound)")
            j_min = float(data["dict_size"].min())
            knees = distinct_knees(data, min_reproduced_share, min_gain)
            at_min = [f"{a:g}" for a, v in knees.items() if v is not None and v[0] == j_min]
            if at_min:
                note += (f"; at alpha {', '.join(at_min)} the count gains less than {min_gain:g} per latent from the "
                         f"grid's smallest J ({j_min:.0f}) on: h may be smaller")
    else:
        evidence = seed_mean(cells, ["alive", "dead"])
        note = ("alive = firing only (needs two seeds with saved dictionaries to count reproduced latents): "
                "an upper bound on h in calibration")
        if value is None:
            note = (f"no alpha shows {min_dead_share:.0%} dead latents at its largest J: h is at least about "
                    f"{j_max}, or the SAEs are trained too briefly for latents to die; {note}")
    return Estimate("dead_latents", value, bootstrap(seeds, pooled) if value is not None else None,
                    {s: pooled([s]) for s in seeds}, per_alpha, note, evidence)


# --- 2. loss basin -------------------------------------------------------------------------------
def basin_table(cells: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Seed-averaged cells with ``rel_loss`` = loss / min over J of the loss at that alpha, and ``in_basin``."""
    m = seed_mean(cells, ["loss", "mse", "l1_sum"])
    m["rel_loss"] = m["loss"] / m.groupby("alpha")["loss"].transform("min")
    m["in_basin"] = m["rel_loss"] <= 1.0 + tolerance
    return m


def _basin_per_alpha(table: pd.DataFrame) -> dict[float, float | None]:
    """Per alpha of a :func:`basin_table`: the smallest J in the basin (None where the alpha has a single J)."""
    return {float(a): (float(g.loc[g["in_basin"], "dict_size"].min()) if g["dict_size"].nunique() >= 2 else None)
            for a, g in table.groupby("alpha")}


def estimate_loss_basin(cells: pd.DataFrame, *, tolerance: float = 0.02) -> Estimate:
    """Loss-basin estimate of h (module docstring, 2); ``cells`` needs alpha, dict_size, seed, loss."""
    seeds = sorted(cells["seed"].unique().tolist())
    if cells.empty or cells["dict_size"].nunique() < 2:
        return Estimate("loss_basin", None, note="needs at least two dictionary sizes")
    evidence = basin_table(cells, tolerance)
    per_alpha = _basin_per_alpha(evidence)
    value = _median(list(per_alpha.values()))

    def pooled(s: Sequence[int]) -> float | None:
        return _median(list(_basin_per_alpha(basin_table(_with_seeds(cells, s), tolerance)).values()))

    note = ""
    if value is not None and value <= cells["dict_size"].min():
        note = "the smallest dictionary of the grid is already in the basin: h may be smaller"
    evidence["basin_h"] = evidence["alpha"].map(per_alpha)
    return Estimate("loss_basin", value, bootstrap(seeds, pooled) if value is not None else None,
                    {s: pooled([s]) for s in seeds}, per_alpha, note, evidence)


# --- 3. dictionary agreement ---------------------------------------------------------------------
def weighted_mmcs(atoms_AN: np.ndarray, weights_A: np.ndarray, other_BN: np.ndarray) -> float:
    """Mean over A's atoms, weighted, of the best cosine with any of B's atoms (rows unit norm)."""
    if weights_A.sum() <= 0:
        return math.nan
    best = (atoms_AN @ other_BN.T).max(axis=1)
    return float((best * weights_A).sum() / weights_A.sum())


def agreement_matrix(dictionaries: dict[int, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """A[J, J'] for one alpha and seed: ``dictionaries[J] = (atoms (J, N) unit rows, frequency (J,))``."""
    sizes = sorted(dictionaries)
    out = pd.DataFrame(np.nan, index=sizes, columns=sizes)
    for a in sizes:
        atoms, freq = dictionaries[a]
        for b in sizes:
            if a != b:
                out.loc[a, b] = weighted_mmcs(atoms, freq, dictionaries[b][0])
    return out


def agreement_h(matrix: pd.DataFrame, min_agreement: float, plateau: float = 0.0) -> tuple[float | None, pd.Series]:
    """The smallest J whose worst agreement with a larger dictionary is within ``plateau`` of the highest
    (above h every J agrees with the larger ones almost equally well); also every J's worst agreement."""
    sizes = sorted(matrix.index)
    worst = pd.Series({j: matrix.loc[j, [k for k in sizes if k > j]].min() for j in sizes[:-1]}, dtype=float)
    worst = worst.dropna()
    if worst.empty or worst.max() < min_agreement:
        return None, worst
    return float(worst.index[plateau_start(worst.to_numpy(), plateau)]), worst


def estimate_agreement(
    matrices: dict[tuple[float, int], pd.DataFrame], *, min_agreement: float = 0.9, plateau: float = 0.0
) -> Estimate:
    """Agreement estimate of h from ``matrices[(alpha, seed)]`` (module docstring, 3)."""
    alphas = sorted({a for a, _ in matrices})
    seeds = sorted({s for _, s in matrices})

    def per_alpha_for(s: Sequence[int]) -> dict[float, float | None]:
        out = {}
        for a in alphas:
            ms = [matrices[(a, x)] for x in s if (a, x) in matrices]
            out[a] = agreement_h(sum(ms) / len(ms), min_agreement, plateau)[0] if ms else None
        return out

    def pooled(s: Sequence[int]) -> float | None:
        return _median(list(per_alpha_for(s).values()))

    if not matrices or len(next(iter(matrices.values()))) < 3:
        return Estimate("dictionary_agreement", None, note="needs at least three dictionary sizes")
    per_alpha = per_alpha_for(seeds)
    value = _median(list(per_alpha.values()))
    rows = []
    for a in alphas:
        ms = [matrices[(a, x)] for x in seeds if (a, x) in matrices]
        worst = agreement_h(sum(ms) / len(ms), min_agreement, plateau)[1]
        rows += [{"alpha": a, "dict_size": int(j), "worst_agreement_with_larger": float(w)}
                 for j, w in worst.items()]
    note = "" if value is not None else f"no dictionary agrees with every larger one above {min_agreement}"
    return Estimate("dictionary_agreement", value, bootstrap(seeds, pooled) if value is not None else None,
                    {s: pooled([s]) for s in seeds}, per_alpha, note, pd.DataFrame(rows))


def mean_matrices(matrices: dict[tuple[float, int], pd.DataFrame]) -> dict[float, pd.DataFrame]:
    """Agreement matrices averaged over seeds, one per alpha (for the figure)."""
    out: dict[float, pd.DataFrame] = {}
    for a in sorted({a for a, _ in matrices}):
        ms = [m for (aa, _), m in matrices.items() if aa == a]
        out[a] = sum(ms) / len(ms)
    return out


# --- recovery against feature frequency (ground truth) ---------------------------------------------
def recovery_by_frequency(recovery: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per J: how well the more frequent and the rarer half of the true features are recovered.

    ``recovery`` has one row per (run, true feature): dict_size, frequency, best_cos. Columns out:
    mean best cosine of the frequent half and of the rare half, the share of each recovered above
    ``threshold``, and the Spearman rank correlation between frequency and best cosine (positive:
    frequent features are learned first).
    """
    rows = []
    for j, g in recovery.groupby("dict_size"):
        median = g["frequency"].median()
        frequent, rare = g[g["frequency"] > median], g[g["frequency"] <= median]
        rank_corr = g["frequency"].rank().corr(g["best_cos"].rank()) if g["frequency"].nunique() > 1 else math.nan
        rows.append({"dict_size": int(j), "frequent_half_cos": frequent["best_cos"].mean(),
                     "rare_half_cos": rare["best_cos"].mean(),
                     "frequent_half_recovered": (frequent["best_cos"] > threshold).mean(),
                     "rare_half_recovered": (rare["best_cos"] > threshold).mean(),
                     "spearman_frequency_cos": rank_corr})
    return pd.DataFrame(rows)
