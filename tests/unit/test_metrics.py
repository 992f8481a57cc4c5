"""Metric definitions: invariances (hypothesis) and planted cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_sweep import metrics


def _dictionary(seed: int, rows: int, n: int) -> torch.Tensor:
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 40), n=st.integers(2, 24))
def test_mmcs__is_one_for_a_permuted_positively_rescaled_copy(seed, rows, n):
    d = _dictionary(seed, rows, n)
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(rows, generator=g)
    scale = torch.rand(rows, 1, generator=g) * 10 + 0.01
    copy = d[perm] * scale
    assert metrics.mmcs(d, copy) == pytest.approx(1.0, abs=1e-5)
    assert metrics.mmcs(copy, d) == pytest.approx(1.0, abs=1e-5)
    assert metrics.mmcs(d, d) == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 30), j=st.integers(1, 30), n=st.integers(2, 16))
def test_mmcs__is_invariant_to_permuting_and_rescaling_the_learned_set(seed, h, j, n):
    f, d = _dictionary(seed, h, n), _dictionary(seed + 7, j, n)
    g = torch.Generator().manual_seed(seed)
    d2 = d[torch.randperm(j, generator=g)] * (torch.rand(j, 1, generator=g) + 0.1)
    assert metrics.mmcs(f, d) == pytest.approx(metrics.mmcs(f, d2), abs=1e-5)
    assert -1.0 - 1e-6 <= metrics.mmcs(f, d) <= 1.0 + 1e-6


def test_mmcs__adding_atoms_never_lowers_true_to_learned_score():
    f, d = _dictionary(0, 20, 8), _dictionary(1, 10, 8)
    assert metrics.mmcs(f, torch.cat([d, _dictionary(2, 5, 8)])) >= metrics.mmcs(f, d)


def test_mmcs__negated_atoms_do_not_count_as_recovered():
    f = torch.eye(4)
    assert metrics.mmcs(f, -f) == pytest.approx(0.0, abs=1e-6)  # best of 0 and -1 per row
    assert metrics.share_recovered(f, -f, 0.9) == 0.0


def test_share_recovered__counts_features_above_threshold():
    f = torch.eye(4)
    learned = torch.stack([f[0], f[1] + 0.05 * f[2], f[2] + 1.0 * f[3]])  # cos 1, ~0.9988, 0.707
    assert metrics.share_recovered(f, learned, 0.9) == pytest.approx(0.5)
    assert metrics.share_recovered(f, learned, 0.99) == pytest.approx(0.5)
    assert metrics.share_recovered(f, learned, 0.999) == pytest.approx(0.25)


def test_code_stats__planted_dead_latent_and_definitions():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100, 6, generator=g)
    z = y + 0.1 * torch.randn(100, 6, generator=g)
    c = torch.relu(torch.randn(100, 5, generator=g))
    c[:, 3] = 0.0  # planted dead latent
    s = metrics.code_stats(y, z, c, alpha=0.5)
    assert s["dead"] == 1 and s["alive"] == 4
    assert s["mse"] == pytest.approx(((z - y) ** 2).mean().item(), rel=1e-5)
    assert s["l1"] == pytest.approx(c.abs().mean().item(), rel=1e-5)
    assert s["loss"] == pytest.approx(s["mse"] + 0.5 * s["l1"], rel=1e-9)
    assert s["l0"] == pytest.approx((c != 0).sum(1).double().mean().item())
    fvu = ((z - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert s["fvu"] == pytest.approx(fvu.item(), rel=1e-4)


def test_code_stats__streaming_equals_one_batch():
    g = torch.Generator().manual_seed(1)
    y, z, c = torch.randn(90, 4, generator=g), torch.randn(90, 4, generator=g), torch.relu(torch.randn(90, 7, generator=g))
    whole = metrics.code_stats(y, z, c, alpha=0.2)
    stream = metrics.CodeStats(4, 7)
    for s in range(0, 90, 32):
        stream.update(y[s : s + 32], z[s : s + 32], c[s : s + 32])
    assert stream.results(0.2) == pytest.approx(whole, rel=1e-6)


def test_dictionary_metrics__perfect_and_partial_recovery():
    f = torch.eye(8)
    perfect = metrics.dictionary_metrics(f, torch.cat([f, f[:2] * 3]), torch.ones(10, dtype=torch.bool))
    assert perfect["mmcs"] == pytest.approx(1.0) and perfect["recovered_99"] == 1.0
    half = metrics.dictionary_metrics(f, f[:4], torch.ones(4, dtype=torch.bool))
    assert half["mmcs"] == pytest.approx(0.5) and half["recovered_90"] == 0.5 and half["mmcs_learned"] == pytest.approx(1.0)
    # learned->true uses alive atoms only: a dead junk atom does not lower it.
    junk = torch.cat([f[:4], torch.ones(1, 8)])
    alive = torch.tensor([True, True, True, True, False])
    assert metrics.dictionary_metrics(f, junk, alive)["mmcs_learned"] == pytest.approx(1.0)
