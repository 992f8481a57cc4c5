"""The toy generator's law, checked statistically on large samples (seeded, so not flaky)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_sweep.config import ToyDataConfig
from sae_sweep.data.toy import ToyFeatures, decay_weights

N_SAMPLES = 200_000


def _codes(cfg: ToyDataConfig, n_samples: int = N_SAMPLES, seed: int = 123) -> torch.Tensor:
    data = ToyFeatures(cfg)
    g = torch.Generator().manual_seed(seed)
    return torch.cat([data.sample_codes(20_000, g)[0] for _ in range(n_samples // 20_000)])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"correlation": 0.0},
        {"correlation": 1.0, "correlation_rank": 4},
        {"decay": "zipf", "zipf_exponent": 1.2},
        {"decay": "constant", "mean_active": 8.0},
        {"h": 64, "n": 32, "mean_active": 20.0, "decay_rate": 0.9},  # probabilities clip at 1
    ],
)
def test_sample_codes__realised_mean_active_within_2_percent_of_target(overrides):
    cfg = ToyDataConfig(**overrides)
    active = _codes(cfg, n_samples=100_000)  # std of the realised mean ~0.15% of the target
    realised = active.sum(dim=1).double().mean().item()
    assert abs(realised - cfg.mean_active) / cfg.mean_active < 0.02, realised
    assert bool(active.any(dim=1).all()), "every sample has at least one active feature"


@pytest.mark.parametrize("correlation", [0.0, 0.8])
def test_sample_codes__per_feature_rates_match_ground_truth_probabilities(correlation):
    cfg = ToyDataConfig(h=128, n=64, correlation=correlation, decay_rate=0.98)
    data = ToyFeatures(cfg)
    rate = _codes(cfg).double().mean(dim=0)
    p = data.ground_truth.probabilities_H.double()
    z = (rate - p) / torch.sqrt(p * (1 - p) / N_SAMPLES)
    assert z.abs().max().item() < 5.0, z.abs().max().item()
    # And the probabilities follow the configured decay law (ratios of consecutive copula marginals).
    q = data.ground_truth.copula_probabilities_H.double()
    assert torch.allclose(q[1:] / q[:-1], torch.full((127,), 0.98, dtype=torch.float64), rtol=1e-6)


def _phi(active: torch.Tensor) -> torch.Tensor:
    x = active.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    return (x.T @ x) / (x.shape[0] - 1)


def test_sample_codes__firing_correlations_follow_the_latent_correlation_when_asked():
    cfg = ToyDataConfig(h=32, n=32, mean_active=6.0, correlation=0.8, correlation_rank=4, decay="constant")
    data = ToyFeatures(cfg)
    phi = _phi(_codes(cfg))
    latent = data.ground_truth.latent_correlation().double()
    off = ~torch.eye(32, dtype=torch.bool)
    # Strongly latent-correlated pairs co-fire, anti-correlated pairs avoid each other.
    assert phi[off & (latent > 0.5)].mean().item() > 0.1
    assert phi[off & (latent < -0.5)].mean().item() < -0.02
    # Firing correlation rises with latent correlation across all pairs.
    r = torch.corrcoef(torch.stack([phi[off], latent[off]]))[0, 1].item()
    assert r > 0.9, r


def test_sample_codes__firing_is_uncorrelated_when_correlation_is_zero():
    cfg = ToyDataConfig(h=32, n=32, mean_active=6.0, correlation=0.0, decay="constant")
    phi = _phi(_codes(cfg))
    off = ~torch.eye(32, dtype=torch.bool)
    # phi of independent indicators has std ~ 1/sqrt(N); the forced-one rule adds a tiny negative bias.
    assert phi[off].abs().max().item() < 5 / math.sqrt(N_SAMPLES) + 0.005


def test_sample__is_y_equals_F_x_with_magnitudes_in_range():
    cfg = ToyDataConfig(h=64, n=32, magnitude_decay=0.97)
    data = ToyFeatures(cfg)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    active, rows, cols, values = data.sample_codes(4096, g1)
    y = data.sample(4096, g2)  # same generator state: the same codes
    x = torch.zeros(4096, 64)
    x[rows, cols] = values
    assert torch.allclose(y, x @ data.ground_truth.features_HN, atol=1e-5)
    assert bool((values >= 0).all()) and bool((values <= data.ground_truth.max_magnitudes_H[cols]).all())
    assert torch.equal(active, x > 0) or bool(((x > 0) <= active).all())


def test_ground_truth__unit_norm_features_and_seeded():
    a, b, c = ToyFeatures(ToyDataConfig(seed=1)), ToyFeatures(ToyDataConfig(seed=1)), ToyFeatures(ToyDataConfig(seed=2))
    f = a.ground_truth.features_HN
    assert torch.allclose(f.norm(dim=1), torch.ones(512), atol=1e-5)
    assert torch.equal(f, b.ground_truth.features_HN)
    assert not torch.equal(f, c.ground_truth.features_HN)
    assert a.ground_truth.tensors()["F"].shape == (256, 512)


def test_batches__same_seeds_same_stream_different_run_seed_different_stream():
    data = ToyFeatures(ToyDataConfig(h=64, n=32))
    s1, s2, s3 = data.batches(64, seed=0), data.batches(64, seed=0), data.batches(64, seed=1)
    first = [next(s1) for _ in range(3)]
    assert all(torch.equal(x, next(s2)) for x in first)
    assert not torch.equal(first[0], next(s3))
    assert torch.equal(data.eval_set(), ToyFeatures(ToyDataConfig(h=64, n=32)).eval_set())


def test_noise__adds_isotropic_variance():
    clean = ToyFeatures(ToyDataConfig(h=64, n=32))
    noisy = ToyFeatures(ToyDataConfig(h=64, n=32, noise_std=0.1))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    diff = noisy.sample(50_000, g2) - clean.sample(50_000, g1)
    assert abs(diff.std().item() - 0.1) < 0.005


@pytest.mark.parametrize("decay", ["exponential", "zipf", "constant"])
def test_decay_weights__follow_the_named_law(decay):
    w = decay_weights(ToyDataConfig(h=10, n=4, decay=decay, decay_rate=0.5, zipf_exponent=2.0, mean_active=2))
    expected = {"exponential": 0.5 ** torch.arange(10.0), "zipf": (torch.arange(10.0) + 1) ** -2.0,
                "constant": torch.ones(10)}[decay]
    assert torch.allclose(w.float(), expected)
