"""Estimator 3, dictionary agreement: weighted MMCS between dictionaries of different J (planted dictionaries)."""

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
    estimate_agreement,
    weighted_mmcs,
)
from tests.helpers.estimate_cells import unit_rows


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
