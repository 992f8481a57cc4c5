"""What the estimators share: the seed mean and the seed bootstrap of an interval (planted tables)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_sweep.analysis.estimate import (
    bootstrap,
    seed_mean,
)


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


