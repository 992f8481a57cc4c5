"""Estimator 1, dead latents: the hinge in alive latents and the peak of reproduced atoms (planted tables)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_sweep.analysis.estimate import (
    best_match_cos,
    estimate_dead_latents,
    hinge_breakpoint,
)
from tests.helpers.estimate_cells import (
    ALPHAS,
    LOG_GRID,
    build_dead_cells,
    build_reproduced_cells,
    planted_alive,
    unit_rows,
)


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
    assert np.isneginf(best_match_cos(base, other[:0])).all() and best_match_cos(base[:0], other).shape == (
        0,
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 40), chunk=st.integers(1, 50))
def test_best_match_cos__chunking_does_not_change_the_result(seed, rows, chunk):
    rng = np.random.default_rng(seed)
    a, b = unit_rows(rng.standard_normal((rows, 4))), unit_rows(rng.standard_normal((7, 4)))
    np.testing.assert_allclose(best_match_cos(a, b, chunk=chunk), (a @ b.T).max(axis=1))


@pytest.mark.parametrize("h", [32, 64, 128])
def test_estimate_dead_latents__distinct_reproduced_count_levels_off_at_h_though_no_latent_dies(h):
    cells = build_reproduced_cells(h)
    est = estimate_dead_latents(cells)
    assert est.value == pytest.approx(0.995 * h)  # seed 0 counts h, seed 1 0.99 h: the most over alphas of their mean
    assert est.per_seed == {0: pytest.approx(h), 1: pytest.approx(0.99 * h)}
    assert est.per_alpha == dict.fromkeys(ALPHAS, pytest.approx(0.995 * h))
    assert est.interval == (pytest.approx(0.99 * h), pytest.approx(h))
    assert est.note.startswith("alive = firing and reproduced")
    ev = est.evidence.set_index(["alpha", "dict_size"])
    assert ev.loc[(0.3, h), "reproduced_share"] == pytest.approx(1 - 0.005)
    assert {"alive", "dead", "reproduced", "reproduced_share"} <= set(ev.columns)


def test_estimate_dead_latents__peak_at_the_largest_size_gives_no_estimate():
    cells = build_reproduced_cells(256)  # h at the grid's end: the share rises to the last J
    est = estimate_dead_latents(cells)
    assert est.value is None and est.interval is None
    assert all(v is None for v in est.per_alpha.values())
    assert "best share: 100% at alpha 0.1, J = 256" in est.note and "at least about 256" in est.note


def test_estimate_dead_latents__peak_at_the_smallest_size_is_kept_and_flagged():
    cells = build_reproduced_cells(16)  # the count levels off from the grid's first J on
    est = estimate_dead_latents(cells)
    assert est.value == pytest.approx(0.995 * 16)
    assert "smallest J (16) on: h may be smaller" in est.note and "alpha 0.1, 0.3, 1" in est.note


def test_estimate_dead_latents__alphas_whose_best_share_is_low_are_skipped():
    low = build_reproduced_cells(64, alphas=[1.0])
    low["reproduced"] *= 0.4  # peak share 0.4: below min_reproduced_share
    cells = pd.concat([build_reproduced_cells(48, alphas=[0.1, 0.3]), low])
    est = estimate_dead_latents(cells, min_reproduced_share=0.5)
    assert est.per_alpha == {0.1: pytest.approx(0.995 * 48), 0.3: pytest.approx(0.995 * 48), 1.0: None}
    assert est.value == pytest.approx(0.995 * 48)
    assert estimate_dead_latents(low).value is None
    assert "best share: 40% at alpha 1, J = 64" in estimate_dead_latents(low).note
    assert estimate_dead_latents(cells, min_reproduced_share=0.3).per_alpha[1.0] == pytest.approx(0.995 * 64)


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
    assert est.value == pytest.approx(0.995 * 64) and set(est.per_seed) == {0, 1}


def _cells_of_counts(counts: dict[float, dict[int, tuple[int, float]]]) -> pd.DataFrame:
    """Two seeds per alpha with the given (distinct reproduced count, reproduced share) per J."""
    return pd.DataFrame([{"alpha": alpha, "dict_size": j, "seed": s, "alive": float(j), "dead": 0.0,
                          "reproduced": share * j, "distinct": float(count)}
                         for alpha, by_j in counts.items() for j, (count, share) in by_j.items() for s in (0, 1)])


# Settings aa and ad of the generalization study (round 8; seed means from their records, rounded).
AA_03 = {128: (33, 0.26), 256: (193, 0.75), 279: (234, 0.84), 304: (288, 0.95), 332: (310, 0.98),
         362: (314, 0.99), 395: (314, 0.95), 431: (315, 0.91), 512: (314, 0.78), 724: (314, 0.51),
         1024: (308, 0.33)}
AD_01 = {64: (52, 0.81), 128: (113, 0.88), 181: (167, 0.92), 197: (190, 0.96), 215: (207, 0.96), 235: (221, 0.94),
         256: (247, 0.96), 304: (293, 0.97), 362: (338, 0.97), 395: (355, 0.95), 431: (378, 0.96), 470: (396, 0.97),
         512: (419, 0.97), 609: (440, 0.95), 724: (453, 0.93), 1024: (458, 0.74)}
AD_03 = {64: (56, 0.88), 128: (114, 0.89), 181: (163, 0.9), 197: (182, 0.93), 215: (196, 0.93), 235: (217, 0.94),
         256: (226, 0.93), 304: (257, 0.91), 362: (292, 0.9), 395: (311, 0.88), 431: (328, 0.87), 470: (348, 0.86),
         512: (353, 0.82), 609: (369, 0.73), 724: (400, 0.67), 1024: (406, 0.49)}


def test_estimate_dead_latents__strong_superposition_reads_the_count_where_twins_take_over():
    # aa (h = 312, alpha 0.3): the reproduced share's plateau runs 332-362 (start and end, the rules of
    # rounds 7 and 6), but past 332 the added latents are twins: the distinct count levels off at h.
    est = estimate_dead_latents(_cells_of_counts({0.3: AA_03}))
    assert est.per_alpha == {0.3: 310}


def test_estimate_dead_latents__the_alpha_that_merges_features_counts_fewer_and_is_outvoted():
    # ad (h = 456): alpha 0.1 levels off at 419 (J = 512); alpha 0.3 merges features and levels off at 348.
    # The share read 197 (plateau start) or the median 384 (plateau ends 512, 256); the most reads 419.
    est = estimate_dead_latents(_cells_of_counts({0.1: AD_01, 0.3: AD_03}))
    assert est.per_alpha == {0.1: 419, 0.3: 348}
    assert est.value == 419


@pytest.mark.parametrize("min_gain, expected", [(0.2, 440), (0.5, 419), (0.7, 338)])
def test_estimate_dead_latents__min_gain_moves_the_knee_along_the_count(min_gain, expected):
    assert estimate_dead_latents(_cells_of_counts({0.1: AD_01}), min_gain=min_gain).value == expected


def test_estimate_dead_latents__ordered_features_read_h_though_the_share_is_flat_below_it():
    # Ordered features: a small dictionary learns the strongest J features cleanly (count = J, share ~1
    # from the grid's smallest J), and past h = 64 the added latents are twins or seed-specific.
    counts = {16: (16, 0.99), 32: (32, 0.995), 48: (47, 0.99), 64: (63, 0.985), 91: (66, 0.9), 128: (68, 0.7),
              256: (70, 0.4)}
    assert estimate_dead_latents(_cells_of_counts({0.3: counts})).per_alpha == {0.3: 63}


def test_estimate_dead_latents__without_a_distinct_column_the_reproduced_count_is_read():
    cells = _cells_of_counts({0.3: AA_03}).drop(columns="distinct")  # reproduced = share x J
    assert estimate_dead_latents(cells).per_alpha == {0.3: pytest.approx(0.95 * 395)}  # twins counted: 22 % high
