"""The three estimators of h on planted, synthetic sweeps (no training, no files)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_sweep.analysis.estimate import (
    agreement_h,
    agreement_matrix,
    basin_table,
    best_match_cos,
    bootstrap,
    estimate_agreement,
    estimate_dead_latents,
    estimate_loss_basin,
    hinge_breakpoint,
    seed_mean,
    weighted_mmcs,
)

# J = 16 .. 512 in log2 steps of 0.5 (16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512).
LOG_GRID = np.array([round(16 * 2 ** (k / 2)) for k in range(11)])
POW2_GRID = [16, 32, 64, 128, 256]
CAL_GRID = [16, 32, 48, 64, 96, 128, 192, 256]  # the calibration recipe's J grid
ALPHAS = [0.1, 0.3, 1.0]


# --- builders ------------------------------------------------------------------------------------
def planted_alive(j: np.ndarray, h: float, slope: float) -> np.ndarray:
    """Every latent alive up to h, then alive grows as J**slope (slope 0: a flat plateau at h)."""
    j = j.astype(float)
    return np.where(j <= h, j, h * (j / h) ** slope)


def build_dead_cells(h: float, *, seeds: tuple[int, ...] = (0, 1, 2), noise: float = 0.02,
                     alphas: list[float] = ALPHAS, grid: np.ndarray = LOG_GRID) -> pd.DataFrame:
    """Cells whose alive count plateaus at h (times a small per-seed factor), never above J."""
    rng = np.random.default_rng(0)
    rows = []
    for alpha in alphas:
        for seed in seeds:
            plateau = h * (1 + noise * rng.standard_normal())
            for j in grid:
                rows.append({"alpha": alpha, "dict_size": int(j), "seed": seed,
                             "alive": float(min(j, plateau)), "dead": float(j - min(j, plateau))})
    return pd.DataFrame(rows)


def build_reproduced_cells(h: int, *, seeds: tuple[int, ...] = (0, 1), alphas: list[float] = ALPHAS,
                           grid: list[int] = CAL_GRID, floor: float = 0.6, surplus: float = 0.5) -> pd.DataFrame:
    """Cells shaped like the calibration's: every latent fires (no dead latents at all), but only some are
    reproduced by the other seed: a share ``floor`` below h (blends), all at h, ``surplus`` of the rest
    beyond h (seed-specific splits). Alive never bends: the firing-only hinge has nothing to find."""
    rows = []
    for alpha in alphas:
        for seed in seeds:
            for j in grid:
                rep = floor * j if j < h else h + surplus * (j - h)
                rows.append({"alpha": alpha, "dict_size": j, "seed": seed, "alive": float(j), "dead": 0.0,
                             "reproduced": rep * (1 - 0.01 * seed)})
    return pd.DataFrame(rows)


def planted_loss(alpha: float, j: float, h: float, c: float = 0.5) -> float:
    """Loss flat in J from h on, rising quadratically in log2(h / J) below it."""
    return (1.0 + alpha) * (1.0 + c * max(0.0, math.log2(h / j)) ** 2)


def build_loss_cells(h: float, *, alphas: list[float] = ALPHAS, seeds: tuple[int, ...] = (0, 1, 2),
                     grid: list[int] = POW2_GRID, noise: float = 1e-4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [{"alpha": a, "dict_size": j, "seed": s,
             "loss": planted_loss(a, j, h) * (1 + noise * rng.standard_normal())}
            for a in alphas for s in seeds for j in grid]
    return pd.DataFrame(rows)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def true_features(h: int = 12, n: int = 24, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((h, n)))  # (H, N)


def planted_dictionary(f_HN: np.ndarray, j: int, rng: np.random.Generator,
                       noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """What an SAE of size J would learn from features F: (atoms (J, N) unit rows, frequency (J,)).

    J < h: blends (normalised sums of groups of one or two true features); J == h: a noisy permuted
    copy of F; J > h: a noisy copy of F plus J - h spare random directions firing half as often.
    """
    h, n = f_HN.shape
    noisy = unit_rows(f_HN + noise * rng.standard_normal((h, n)))
    if j < h:
        groups = np.array_split(rng.permutation(h), j)
        atoms = unit_rows(np.stack([f_HN[g].sum(axis=0) for g in groups]))
        freq = rng.uniform(0.5, 1.5, j)
    elif j == h:
        atoms, freq = noisy[rng.permutation(h)], rng.uniform(0.5, 1.5, h)
    else:
        spare = unit_rows(rng.standard_normal((j - h, n)))
        atoms = np.concatenate([noisy, spare])
        freq = np.concatenate([rng.uniform(0.5, 1.5, h), 0.5 * rng.uniform(0.5, 1.5, j - h)])
    order = rng.permutation(j)
    return atoms[order], freq[order]


def build_matrices(sizes: list[int], *, h: int = 12, alphas: tuple[float, ...] = (0.1, 0.3),
                   seeds: tuple[int, ...] = (0, 1)) -> dict[tuple[float, int], pd.DataFrame]:
    """Agreement matrices of planted dictionaries for every (alpha, seed)."""
    f = true_features(h)
    out = {}
    for i, key in enumerate((a, s) for a in alphas for s in seeds):
        rng = np.random.default_rng(100 + i)
        out[key] = agreement_matrix({j: planted_dictionary(f, j, rng) for j in sizes})
    return out


AGREEMENT_SIZES = [6, 8, 12, 16, 24]  # h = 12 in the middle


# --- shared helpers ------------------------------------------------------------------------------
def test_seed_mean__averages_over_seeds_one_row_per_alpha_and_size():
    cells = pd.DataFrame({"alpha": [0.1] * 4 + [0.3] * 4, "dict_size": [16, 16, 32, 32] * 2,
                          "seed": [0, 1] * 4, "loss": [1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 6.0, 10.0]})
    m = seed_mean(cells, ["loss", "not_a_column"])
    assert len(m) == 4
    assert list(m.columns) == ["alpha", "dict_size", "loss"]
    got = {(r.alpha, r.dict_size): r.loss for r in m.itertuples()}
    assert got == {(0.1, 16): 2.0, (0.1, 32): 3.0, (0.3, 16): 6.0, (0.3, 32): 8.0}


def test_bootstrap__needs_at_least_two_distinct_seeds():
    assert bootstrap([3], lambda s: 1.0) is None
    assert bootstrap([3, 3, 3], lambda s: 1.0) is None
    assert bootstrap([], lambda s: 1.0) is None


def test_bootstrap__constant_estimator_gives_a_point_interval():
    assert bootstrap([0, 1, 2], lambda s: 7.5) == (7.5, 7.5)


def test_bootstrap__is_none_when_no_draw_gives_an_estimate():
    assert bootstrap([0, 1, 2], lambda s: None) is None
    assert bootstrap([0, 1, 2], lambda s: math.nan) is None


def test_bootstrap__is_none_when_most_draws_give_no_estimate():
    # Only draws holding every seed give a value: with 3 seeds that is 2/9 of the draws.
    assert bootstrap([0, 1, 2], lambda s: 1.0 if len(set(s)) == 3 else None) is None


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=6),
       rng_seed=st.integers(0, 1000))
def test_bootstrap__interval_of_a_mean_is_ordered_and_within_the_per_seed_range(values, rng_seed):
    per_seed = dict(enumerate(values))
    interval = bootstrap(list(per_seed), lambda s: float(np.mean([per_seed[x] for x in s])),
                         n_boot=100, rng_seed=rng_seed)
    assert interval is not None
    lo, hi = interval
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9


def test_bootstrap__is_deterministic_for_a_fixed_rng_seed():
    per_seed = {0: 1.0, 1: 5.0, 2: 3.0, 3: 8.0}

    def mean(s):
        return float(np.mean([per_seed[x] for x in s]))

    assert bootstrap(list(per_seed), mean, rng_seed=4) == bootstrap(list(per_seed), mean, rng_seed=4)


# --- 1. dead latents -----------------------------------------------------------------------------
@pytest.mark.parametrize("slope", [0.0, 0.3, 0.6])
@pytest.mark.parametrize("h", [40, 64, 100])
def test_hinge_breakpoint__finds_a_planted_h_between_grid_points(h, slope):
    assert hinge_breakpoint(LOG_GRID, planted_alive(LOG_GRID, h, slope)) == pytest.approx(h, rel=0.1)


@settings(max_examples=30, deadline=None)
@given(h=st.floats(24, 300), slope=st.floats(0.0, 0.6))
def test_hinge_breakpoint__recovers_any_planted_h_and_slope(h, slope):
    assert hinge_breakpoint(LOG_GRID, planted_alive(LOG_GRID, h, slope)) == pytest.approx(h, rel=0.1)


def test_hinge_breakpoint__accepts_integer_inputs_and_zero_alive():
    alive = np.minimum(LOG_GRID, 64)
    alive_with_zero = alive.copy()
    alive_with_zero[0] = 0  # log2 of 0 is clipped at 1, not -inf
    assert hinge_breakpoint(LOG_GRID, alive) == pytest.approx(64, rel=0.05)
    assert math.isfinite(hinge_breakpoint(LOG_GRID, alive_with_zero))


@pytest.mark.parametrize("h", [40, 100])
def test_estimate_dead_latents__plateau_gives_h_with_an_ordered_interval_around_it(h):
    cells = build_dead_cells(h)
    est = estimate_dead_latents(cells)
    assert est.signal == "dead_latents"
    assert est.value == pytest.approx(h, rel=0.1)
    assert est.interval is not None
    lo, hi = est.interval
    assert lo <= est.value <= hi
    assert hi - lo < 0.2 * h
    assert set(est.per_seed) == {0, 1, 2}
    assert all(v == pytest.approx(h, rel=0.1) for v in est.per_seed.values())
    assert set(est.per_alpha) == set(ALPHAS)
    assert all(v == pytest.approx(h, rel=0.1) for v in est.per_alpha.values())
    assert est.note.startswith("alive = firing only")  # no reproduced counts: the firing-only hinge
    assert set(est.evidence.columns) == {"alpha", "dict_size", "alive", "dead"}
    assert len(est.evidence) == len(ALPHAS) * len(LOG_GRID)


def test_estimate_dead_latents__two_seeds_still_give_an_interval():
    est = estimate_dead_latents(build_dead_cells(64, seeds=(3, 7)))
    assert set(est.per_seed) == {3, 7}
    assert est.interval is not None and est.interval[0] <= est.value <= est.interval[1]


def test_estimate_dead_latents__no_dead_latents_anywhere_gives_no_estimate():
    cells = build_dead_cells(10_000)  # h far beyond the grid: alive == J everywhere
    assert (cells["alive"] == cells["dict_size"]).all()
    est = estimate_dead_latents(cells)
    assert est.value is None
    assert est.interval is None
    assert "dead" in est.note and "512" in est.note
    assert all(v is None for v in est.per_alpha.values())
    assert all(v is None for v in est.per_seed.values())


def test_estimate_dead_latents__alphas_below_min_dead_share_are_skipped_not_counted():
    # alpha 1.0 has only ~2% dead latents at J = 512: no estimate there, the others carry the median.
    cells = pd.concat([build_dead_cells(64, alphas=[0.1, 0.3]), build_dead_cells(500, alphas=[1.0])])
    est = estimate_dead_latents(cells, min_dead_share=0.05)
    assert est.per_alpha[1.0] is None
    assert est.value == pytest.approx(64, rel=0.1)


def test_best_match_cos__is_each_atoms_highest_signed_cosine_with_the_other_dictionary():
    rng = np.random.default_rng(0)
    base = unit_rows(rng.standard_normal((6, 16)))
    other = np.vstack([base[[3, 0, 5]], unit_rows(rng.standard_normal((4, 16)))])  # 3 of 6 copied, shuffled
    best = best_match_cos(base, other)
    assert best.shape == (6,)
    assert np.allclose(best[[0, 3, 5]], 1.0) and (best[[1, 2, 4]] < 0.99).all()
    assert (best_match_cos(base, -other[:3]) < 0.99).all()  # the sign counts: a latent is not its negative
    assert np.isneginf(best_match_cos(base, other[:0])).all() and best_match_cos(base[:0], other).shape == (0,)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 40), chunk=st.integers(1, 50))
def test_best_match_cos__chunking_does_not_change_the_result(seed, rows, chunk):
    rng = np.random.default_rng(seed)
    a, b = unit_rows(rng.standard_normal((rows, 4))), unit_rows(rng.standard_normal((7, 4)))
    np.testing.assert_allclose(best_match_cos(a, b, chunk=chunk), (a @ b.T).max(axis=1))


@pytest.mark.parametrize("h", [32, 64, 128])
def test_estimate_dead_latents__reproduced_share_peaks_at_h_though_no_latent_dies(h):
    cells = build_reproduced_cells(h)
    est = estimate_dead_latents(cells)
    assert est.value == h
    assert est.per_seed == {0: h, 1: h} and est.per_alpha == dict.fromkeys(ALPHAS, h)
    assert est.interval == (h, h)
    assert est.note.startswith("alive = firing and reproduced")
    ev = est.evidence.set_index(["alpha", "dict_size"])
    assert ev.loc[(0.3, h), "reproduced_share"] == pytest.approx(1 - 0.005)
    assert {"alive", "dead", "reproduced", "reproduced_share"} <= set(ev.columns)


def test_estimate_dead_latents__peak_at_the_largest_size_gives_no_estimate():
    cells = build_reproduced_cells(256)  # h at the grid's end: the share rises to the last J
    est = estimate_dead_latents(cells)
    assert est.value is None and est.interval is None
    assert all(v is None for v in est.per_alpha.values())
    assert "best: 100% at alpha 0.1, J = 256" in est.note and "at least about 256" in est.note


def test_estimate_dead_latents__peak_at_the_smallest_size_is_kept_and_flagged():
    cells = build_reproduced_cells(16)  # the share falls from the grid's first J on
    est = estimate_dead_latents(cells)
    assert est.value == 16
    assert "smallest J (16): h may be smaller" in est.note and "alpha 0.1, 0.3, 1" in est.note


def test_estimate_dead_latents__alphas_whose_best_share_is_low_are_skipped():
    low = build_reproduced_cells(64, alphas=[1.0])
    low["reproduced"] *= 0.4  # peak share 0.4: below min_reproduced_share
    cells = pd.concat([build_reproduced_cells(48, alphas=[0.1, 0.3]), low])
    est = estimate_dead_latents(cells, min_reproduced_share=0.5)
    assert est.per_alpha == {0.1: 48, 0.3: 48, 1.0: None}
    assert est.value == 48
    assert estimate_dead_latents(low).value is None
    assert "best: 40% at alpha 1, J = 64" in estimate_dead_latents(low).note
    assert estimate_dead_latents(cells, min_reproduced_share=0.3).per_alpha[1.0] == 64


def test_estimate_dead_latents__one_seed_falls_back_to_the_firing_only_hinge():
    cells = build_dead_cells(64, seeds=(0,))
    cells["reproduced"] = cells["alive"] * 0.5  # a lone seed has nothing to be reproduced in
    est = estimate_dead_latents(cells)
    assert est.value == pytest.approx(64, rel=0.1)
    assert est.note.startswith("alive = firing only")
    assert "reproduced" not in est.evidence.columns


def test_estimate_dead_latents__cells_without_a_reproduced_count_are_left_out_of_it():
    cells = build_reproduced_cells(64, seeds=(0, 1, 2))
    cells.loc[cells["seed"] == 2, "reproduced"] = np.nan  # e.g. a seed that saved no weights
    est = estimate_dead_latents(cells)
    assert est.value == 64 and set(est.per_seed) == {0, 1}


# --- 2. loss basin -------------------------------------------------------------------------------
def test_basin_table__in_basin_follows_the_relative_tolerance_rule_exactly():
    cells = pd.DataFrame({
        "alpha": [0.1, 0.1, 0.1, 1.0, 1.0, 1.0], "dict_size": [8, 16, 32] * 2, "seed": [0] * 6,
        "loss": [1.3, 1.05, 1.0,  # alpha 0.1: min 1.0 at J = 32
                 2.2, 2.0, 2.4]})  # alpha 1.0: min 2.0 at J = 16; 2.2 / 2.0 == 1.1 sits on the edge
    m = basin_table(cells, tolerance=0.1).set_index(["alpha", "dict_size"])
    assert m["rel_loss"].to_dict() == pytest.approx({(0.1, 8): 1.3, (0.1, 16): 1.05, (0.1, 32): 1.0,
                                                     (1.0, 8): 1.1, (1.0, 16): 1.0, (1.0, 32): 1.2})
    assert m["in_basin"].to_dict() == {(0.1, 8): False, (0.1, 16): True, (0.1, 32): True,
                                       (1.0, 8): True, (1.0, 16): True, (1.0, 32): False}


@pytest.mark.parametrize("h", [32, 64, 128])
def test_estimate_loss_basin__planted_basin_on_the_grid_gives_h(h):
    est = estimate_loss_basin(build_loss_cells(h))
    assert est.signal == "loss_basin"
    assert est.value == h
    assert est.interval == (h, h)
    assert est.per_seed == {0: h, 1: h, 2: h}
    assert est.note == ""
    assert est.per_alpha == {a: h for a in ALPHAS}
    assert set(est.evidence["basin_h"]) == {h}


def test_estimate_loss_basin__h_below_the_grid_gives_the_smallest_size_and_says_so():
    est = estimate_loss_basin(build_loss_cells(8))
    assert est.value == min(POW2_GRID)
    assert "smaller" in est.note


def test_estimate_loss_basin__a_single_working_alpha_gives_its_own_basin():
    est = estimate_loss_basin(build_loss_cells(64, alphas=[0.3]))
    assert est.value == 64


def test_estimate_loss_basin__a_single_size_gives_no_estimate():
    assert estimate_loss_basin(build_loss_cells(64, grid=[64])).value is None


def test_estimate_loss_basin__pools_the_alphas_by_their_median():
    # h depends on alpha (32, 64, 128): each alpha's own basin, the median over them.
    cells = pd.concat([build_loss_cells(h, alphas=[a]) for a, h in zip(ALPHAS, [32, 64, 128], strict=True)])
    est = estimate_loss_basin(cells)
    assert est.per_alpha == dict(zip(ALPHAS, [32.0, 64.0, 128.0], strict=True))
    assert est.value == 64
    assert estimate_loss_basin(cells[cells["alpha"] != ALPHAS[1]]).value == 80  # two alphas: their mean


def _smooth_loss_cells(grid: list[int], h: float = 100.0, tolerance: float = 0.02) -> pd.DataFrame:
    """Loss falling linearly to its floor at J = h, in excess of it by the tolerance at J = 0.9 h."""
    slope = tolerance / (0.1 * h)
    return pd.DataFrame([{"alpha": a, "dict_size": j, "seed": s, "loss": (1 + a) * (1 + slope * max(0.0, h - j))}
                         for a in ALPHAS for s in (0, 1) for j in grid])


def test_estimate_loss_basin__refining_the_grid_converges_on_the_curve_and_never_passes_it():
    # The loss crosses the tolerance at J = 0.9 h = 90: every grid's estimate is its smallest J at or above
    # 90, so adding sizes moves it towards 90 (refinement) and never below (the drift of the first rule).
    coarse = [32, 64, 128, 256]
    grids = [coarse, sorted({*coarse, 91, 108}), sorted({*coarse, 76, 83, 91, 99, 108, 118}),
             sorted({*coarse, *range(80, 128, 2)})]
    values = [estimate_loss_basin(_smooth_loss_cells(g)).value for g in grids]
    assert values == [128, 91, 91, 90]


# --- 3. dictionary agreement ---------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 30), n=st.integers(2, 24))
def test_weighted_mmcs__is_one_for_a_permuted_rescaled_renormalised_copy(seed, rows, n):
    rng = np.random.default_rng(seed)
    atoms = unit_rows(rng.standard_normal((rows, n)))
    copy = unit_rows(atoms[rng.permutation(rows)] * rng.uniform(0.01, 10, (rows, 1)))
    weights = rng.uniform(0.01, 5, rows)
    assert weighted_mmcs(atoms, weights, copy) == pytest.approx(1.0, abs=1e-6)
    assert weighted_mmcs(copy, weights, atoms) == pytest.approx(1.0, abs=1e-6)


def test_weighted_mmcs__zero_total_weight_is_nan():
    atoms = np.eye(3)
    assert math.isnan(weighted_mmcs(atoms, np.zeros(3), atoms))


def test_weighted_mmcs__weights_decide_which_atoms_count():
    atoms = np.eye(4)
    other = np.eye(4)[:2]  # matches atoms 0 and 1; atoms 2 and 3 are orthogonal to it
    assert weighted_mmcs(atoms, np.ones(4), other) == pytest.approx(0.5)
    assert weighted_mmcs(atoms, np.array([100.0, 100.0, 0.01, 0.01]), other) > 0.999
    assert weighted_mmcs(atoms, np.array([0.01, 0.01, 100.0, 100.0]), other) < 0.001
    assert weighted_mmcs(atoms, np.array([1.0, 0.0, 0.0, 0.0]), other) == 1.0  # never-firing atoms ignored


def test_agreement_matrix__is_square_with_nan_diagonal_indexed_by_sorted_sizes():
    f = true_features()
    rng = np.random.default_rng(0)
    dictionaries = {j: planted_dictionary(f, j, rng) for j in [16, 6, 12, 24, 8]}
    a = agreement_matrix(dictionaries)
    assert list(a.index) == list(a.columns) == [6, 8, 12, 16, 24]
    assert np.isnan(np.diag(a.to_numpy())).all()
    off = a.to_numpy()[~np.eye(5, dtype=bool)]
    assert np.isfinite(off).all() and (off <= 1 + 1e-9).all()
    atoms, freq = dictionaries[12]
    assert a.loc[12, 24] == pytest.approx(weighted_mmcs(atoms, freq, dictionaries[24][0]))


def test_agreement_h__right_sized_dictionary_agrees_best_with_every_larger_one():
    a = build_matrices(AGREEMENT_SIZES, alphas=(0.1,), seeds=(0,))[(0.1, 0)]
    h, worst = agreement_h(a, min_agreement=0.9)
    assert h == 12
    assert list(worst.index) == [6, 8, 12, 16]  # the largest size has no larger one
    assert worst[12] > 0.95
    assert worst[6] < worst[12] and worst[8] < worst[12] and worst[16] < worst[12]


def test_estimate_agreement__planted_dictionaries_give_h():
    matrices = build_matrices(AGREEMENT_SIZES)
    est = estimate_agreement(matrices)
    assert est.signal == "dictionary_agreement"
    assert est.value == 12
    assert est.interval is not None
    lo, hi = est.interval
    assert min(AGREEMENT_SIZES) <= lo <= est.value <= hi <= max(AGREEMENT_SIZES)
    assert est.per_seed == {0: 12, 1: 12}
    assert est.per_alpha == {0.1: 12, 0.3: 12}
    assert est.note == ""
    assert len(est.evidence) == 2 * (len(AGREEMENT_SIZES) - 1)
    assert set(est.evidence.columns) == {"alpha", "dict_size", "worst_agreement_with_larger"}


def test_estimate_agreement__threshold_above_every_agreement_gives_no_estimate():
    est = estimate_agreement(build_matrices(AGREEMENT_SIZES), min_agreement=1.01)
    assert est.value is None
    assert est.interval is None
    assert "1.01" in est.note
    assert all(v is None for v in est.per_alpha.values())


def test_estimate_agreement__fewer_than_three_sizes_gives_no_estimate():
    est = estimate_agreement(build_matrices([12, 16]))
    assert est.value is None
    assert "three" in est.note
    assert estimate_agreement({}).value is None


def _cells_of_shares(shares: dict[int, float], *, alpha: float = 0.3) -> pd.DataFrame:
    """Two seeds at one alpha with the given reproduced share per J (every latent firing)."""
    return pd.DataFrame([{"alpha": alpha, "dict_size": j, "seed": s, "alive": float(j), "dead": 0.0,
                          "reproduced": share * j} for j, share in shares.items() for s in (0, 1)])


def test_estimate_dead_latents__strong_superposition_reads_the_plateau_start_not_its_end():
    # Setting aa of the generalization study (h = 312, h/n = 6.5, alpha 0.3, rounded): the seeds also
    # reproduce the surplus latents just beyond h, so the share stays on its plateau to J = 362.
    # The plateau's end (the rule up to round 6) read 362; its start reads 332.
    shares = {128: 0.26, 256: 0.75, 279: 0.84, 304: 0.95, 332: 0.985, 362: 0.986, 395: 0.95, 431: 0.91,
              512: 0.78, 1024: 0.33}
    est = estimate_dead_latents(_cells_of_shares(shares), plateau=0.02)
    assert est.per_alpha == {0.3: 332}


def test_estimate_dead_latents__ordered_features_plateau_from_the_smallest_size_still_reads_its_end():
    # Ordered features: a small dictionary learns the strongest J features cleanly, so the share is on its
    # plateau from the grid's smallest J and falls only past h = 64.
    shares = {16: 0.99, 32: 0.995, 48: 0.99, 64: 0.985, 91: 0.9, 128: 0.7, 256: 0.4}
    est = estimate_dead_latents(_cells_of_shares(shares), plateau=0.02)
    assert est.per_alpha == {0.3: 64}
