"""Estimator 2, the loss basin: the smallest J within tolerance of the best loss (planted tables)."""

from __future__ import annotations

import pandas as pd
import pytest

from sae_sweep.analysis.estimate import (
    basin_table,
    estimate_loss_basin,
)
from tests.helpers.estimate_cells import (
    ALPHAS,
    POW2_GRID,
    build_loss_cells,
)


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


