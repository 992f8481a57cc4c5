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


def _cells_of_shares(shares: dict[int, float], *, alpha: float = 0.3) -> pd.DataFrame:
    """Two seeds at one alpha with the given reproduced share per J (every latent firing)."""
    return pd.DataFrame(
        [
            {
                "alpha": alpha,
                "dict_size": j,
                "seed": s,
                "alive": float(j),
                "dead": 0.0,
                "reproduced": share * j,
            }
            for j, share in shares.items()
            for s in (0, 1)
        ]
    )


def test_estimate_dead_latents__strong_superposition_reads_the_plateau_start_not_its_end():
    # Setting aa of the generalization study (h = 312, h/n = 6.5, alpha 0.3, rounded): the seeds also
    # reproduce the surplus latents just beyond h, so the share stays on its plateau to J = 362.
    # The plateau's end (the rule up to round 6) read 362; its start reads 332.
    shares = {
        128: 0.26,
        256: 0.75,
        279: 0.84,
        304: 0.95,
        332: 0.985,
        362: 0.986,
        395: 0.95,
        431: 0.91,
        512: 0.78,
        1024: 0.33,
    }
    est = estimate_dead_latents(_cells_of_shares(shares), plateau=0.02)
    assert est.per_alpha == {0.3: 332}


def test_estimate_dead_latents__ordered_features_plateau_from_the_smallest_size_still_reads_its_end():
    # Ordered features: a small dictionary learns the strongest J features cleanly, so the share is on its
    # plateau from the grid's smallest J and falls only past h = 64.
    shares = {16: 0.99, 32: 0.995, 48: 0.99, 64: 0.985, 91: 0.9, 128: 0.7, 256: 0.4}
    est = estimate_dead_latents(_cells_of_shares(shares), plateau=0.02)
    assert est.per_alpha == {0.3: 64}
