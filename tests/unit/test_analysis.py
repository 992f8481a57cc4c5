"""The analysis's reproduced counts (analysis/report.py: with_reproduced) on planted cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sae_sweep.analysis.report import match_cosines, with_reproduced


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_with_reproduced__counts_alive_atoms_matched_by_another_seed_at_the_same_cell():
    rng = np.random.default_rng(0)
    shared = _unit(rng.standard_normal((3, 8)))
    d = {  # run dir -> (atoms, firing frequency)
        "a0": (np.vstack([shared, _unit(rng.standard_normal((2, 8)))]), np.array([0.1, 0.1, 0.0, 0.1, 0.1])),
        "a1": (np.vstack([shared[::-1], _unit(rng.standard_normal((2, 8)))]), np.full(5, 0.1)),
        "b0": (shared[:2], np.full(2, 0.1)),  # another alpha: no partner seed
    }
    cells = pd.DataFrame({"run_dir": ["a0", "a1", "b0", "nw"], "alpha": [0.1, 0.1, 1.0, 0.1],
                          "dict_size": [5, 5, 2, 5], "seed": [0, 1, 0, 2]})
    matches = match_cosines(cells, d, min_frequency=0.0, twin_floor=-1.0)
    out = with_reproduced(cells, matches, min_cos=0.99).set_index("run_dir")["reproduced"]
    # a0: shared[2] never fires, so 2 of its atoms are reproduced; a1's copy of shared[2] finds no alive
    # partner in a0; b0 has no other seed and "nw" saved no weights: unknown, not zero.
    assert out["a0"] == 2 and out["a1"] == 2
    assert np.isnan(out["b0"]) and np.isnan(out["nw"])
    assert with_reproduced(cells, matches, min_cos=-1.0).set_index("run_dir").loc["a1", "reproduced"] == 5
    # min_frequency decides which atoms take part on both sides: with a higher bar, a0's first atom drops out
    d["a0"][1][0] = 0.05
    assert with_reproduced(cells, match_cosines(cells, d, min_frequency=0.06), 0.99).set_index(
        "run_dir").loc["a1", "reproduced"] == 1


def test_with_reproduced__with_three_seeds_averages_over_the_other_two():
    rng = np.random.default_rng(1)
    shared = _unit(rng.standard_normal((4, 16)))
    own = [_unit(rng.standard_normal((k, 16))) for k in (4, 4, 6)]  # atoms no other seed has
    d = {"s0": (np.vstack([shared, own[0]]), np.full(8, 0.1)),  # s1 holds all four shared atoms, s2 two
         "s1": (np.vstack([shared, own[1]]), np.full(8, 0.1)),
         "s2": (np.vstack([shared[:2], own[2]]), np.full(8, 0.1))}
    cells = pd.DataFrame({"run_dir": list(d), "alpha": 0.3, "dict_size": 8, "seed": [0, 1, 2]})
    out = with_reproduced(cells, match_cosines(cells, d, 0.0), min_cos=0.99).set_index("run_dir")["reproduced"]
    assert out["s0"] == (4 + 2) / 2  # a mean over pairs, not "found in any other seed" (which would be 4)
    assert out["s1"] == (4 + 2) / 2 and out["s2"] == (2 + 2) / 2


def test_with_reproduced__distinct_counts_twins_once_and_needs_twin_cosines_from_the_floor_up():
    rng = np.random.default_rng(2)
    shared = _unit(rng.standard_normal((4, 16)))
    twin = _unit((shared[0] + 0.05 * rng.standard_normal(16))[None])  # within cosine 0.99 of shared[0]
    d = {"s0": (np.vstack([shared, twin, _unit(rng.standard_normal((1, 16)))]), np.full(6, 0.1)),
         "s1": (np.vstack([shared, twin, _unit(rng.standard_normal((1, 16)))]), np.full(6, 0.1))}
    cells = pd.DataFrame({"run_dir": list(d), "alpha": 0.3, "dict_size": 6, "seed": [0, 1]})
    matches = match_cosines(cells, d, 0.0)
    out = with_reproduced(cells, matches, min_cos=0.95).set_index("run_dir")
    assert (out["reproduced"] == 5).all()  # four shared atoms and the twin; the last atoms are each seed's own
    assert (out["distinct"] == 4).all()  # the twin and shared[0] are one direction
    assert (with_reproduced(cells, matches, min_cos=0.9999).set_index("run_dir")["distinct"] == 5).all()
    with pytest.raises(ValueError, match="below the twin cosines computed"):
        with_reproduced(cells, matches, min_cos=0.5)  # twins were computed from 0.8 up only
