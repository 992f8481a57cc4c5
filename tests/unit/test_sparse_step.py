"""The sparse-aware step: the same loss and gradients as the dense step and as autograd, and it trains alike."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_sweep.config import ToyDataConfig
from sae_sweep.data.toy import ToyFeatures
from sae_sweep.sae import SAE
from sae_sweep.step import StepBuffers, loss_and_grads

ALWAYS_SPARSE, ALWAYS_DENSE = 1.0, 0.0


def _sae(n: int, j: int, k: int, decoder_bias: bool, seed: int = 0, offset: float = -0.3) -> SAE:
    """An SAE away from its symmetric init; ``offset`` shifts b_enc (more negative: fewer codes fire)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(n, j, k, decoder_bias=decoder_bias, generator=g)
    with torch.no_grad():
        sae.W_enc_KNJ.add_(0.3 * torch.randn(sae.W_enc_KNJ.shape, generator=g))
        sae.b_enc_KJ.copy_(0.2 * torch.randn(sae.b_enc_KJ.shape, generator=g) + offset)
        if decoder_bias:
            sae.b_dec_KN.copy_(0.3 * torch.randn(sae.b_dec_KN.shape, generator=g))
    return sae


def _batch(n: int, b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, n, generator=torch.Generator().manual_seed(seed))


def _hand(sae: SAE, y: torch.Tensor, alpha_K: list[float], sparse_below: float, buffers: StepBuffers) -> tuple:
    mse_K, l1_K = loss_and_grads(sae, y, alpha_K, sparse_below=sparse_below, buffers=buffers)
    return mse_K.clone(), l1_K.clone(), {name: p.grad.clone() for name, p in sae.named_parameters()}


def _autograd(sae: SAE, y: torch.Tensor, alpha_K: list[float]) -> tuple:
    for p in sae.parameters():
        p.grad = None
    loss_K, mse_K, l1_K = sae.loss(y, torch.tensor(alpha_K))
    loss_K.sum().backward()  # members are independent, so each gets its own loss's gradient
    return mse_K.detach(), l1_K.detach(), {name: p.grad.clone() for name, p in sae.named_parameters()}


def _assert_same(got: tuple, want: tuple, tol: float = 1e-5) -> None:
    """mse, l1 and every gradient equal to float tolerance (relative to the largest entry)."""
    assert torch.allclose(got[0], want[0], rtol=tol, atol=1e-7), (got[0], want[0])
    assert torch.allclose(got[1], want[1], rtol=tol, atol=1e-7), (got[1], want[1])
    assert got[2].keys() == want[2].keys()
    for name, w in want[2].items():
        err = (got[2][name] - w).abs().max() / w.abs().max().clamp_min(1e-12)
        assert err < tol, f"{name}: max error {err:.2e} of the largest gradient entry"


@pytest.mark.parametrize("decoder_bias", [True, False])
@pytest.mark.parametrize("alpha_K", [[0.0], [0.2], [0.0, 0.5]], ids=["K1-alpha0", "K1-alpha0.2", "K2"])
@pytest.mark.parametrize(("n", "j", "b"), [(16, 64, 200), (8, 33, 37), (24, 96, 128)])
def test_sparse_path__equals_dense_path_and_autograd(n, j, b, alpha_K, decoder_bias):
    sae, buffers = _sae(n, j, len(alpha_K), decoder_bias), StepBuffers()
    y = _batch(n, b)
    sparse = _hand(sae, y, alpha_K, ALWAYS_SPARSE, buffers)
    shares = buffers.active_share
    assert shares is not None and all(0.0 < s < ALWAYS_SPARSE for s in shares)  # so the sparse path ran
    dense = _hand(sae, y, alpha_K, ALWAYS_DENSE, buffers)
    _assert_same(sparse, dense)
    _assert_same(sparse, _autograd(sae, y, alpha_K))
    assert ("b_dec_KN" in sparse[2]) == decoder_bias  # a fixed decoder bias is a buffer, not learned


@pytest.mark.parametrize("decoder_bias", [True, False])
def test_one_member_sparse_and_one_dense_in_the_same_call(decoder_bias):
    sae, buffers = _sae(16, 64, 2, decoder_bias), StepBuffers()
    with torch.no_grad():
        sae.b_enc_KJ[0] -= 3.0  # member 0 fires rarely, member 1 often
        sae.b_enc_KJ[1] += 1.0
    y, alpha_K, threshold = _batch(16, 150), [0.1, 0.3], 0.2
    mixed = _hand(sae, y, alpha_K, threshold, buffers)
    share_0, share_1 = buffers.active_share
    assert share_0 < threshold <= share_1  # one call took both paths
    _assert_same(mixed, _hand(sae, y, alpha_K, ALWAYS_DENSE, buffers))
    _assert_same(mixed, _autograd(sae, y, alpha_K))


def test_a_member_switching_paths_between_steps_stays_exact():
    """The path a member took last step only decides how its codes are counted, never the result."""
    sae, y, alpha_K = _sae(16, 64, 1, True, offset=-3.0), _batch(16, 100), [0.2]
    buffers = StepBuffers()
    _hand(sae, y, alpha_K, 0.1, buffers)
    assert buffers.active_share[0] < 0.1  # sparse ...
    with torch.no_grad():
        sae.b_enc_KJ += 3.0
    now_dense = _hand(sae, y, alpha_K, 0.1, buffers)
    assert buffers.active_share[0] >= 0.1  # ... then dense
    _assert_same(now_dense, _autograd(sae, y, alpha_K))
    with torch.no_grad():
        sae.b_enc_KJ -= 3.0
    sparse_again = _hand(sae, y, alpha_K, 0.1, buffers)
    assert buffers.active_share[0] < 0.1
    _assert_same(sparse_again, _autograd(sae, y, alpha_K))


@pytest.mark.parametrize("decoder_bias", [True, False])
def test_sparse_path__a_row_without_active_codes(decoder_bias):
    sae, buffers = _sae(16, 64, 1, decoder_bias, offset=-0.5), StepBuffers()
    with torch.no_grad():
        sae.b_enc_KJ.clamp_(max=-0.1)  # with y - b_dec = 0 every pre-activation is negative
    y = _batch(16, 50)
    y[7] = sae.b_dec_KN[0]  # row 7: x = 0, so no code fires
    with torch.no_grad():
        assert int((sae.encode(y)[0, 7] > 0).sum()) == 0 and int((sae.encode(y)[0] > 0).sum()) > 0
    sparse = _hand(sae, y, [0.1], ALWAYS_SPARSE, buffers)
    _assert_same(sparse, _hand(sae, y, [0.1], ALWAYS_DENSE, buffers))
    _assert_same(sparse, _autograd(sae, y, [0.1]))


@pytest.mark.parametrize("decoder_bias", [True, False])
def test_sparse_path__all_codes_zero(decoder_bias):
    sae, buffers = _sae(16, 64, 2, decoder_bias), StepBuffers()
    with torch.no_grad():
        sae.b_enc_KJ.fill_(-1e3)  # nothing fires: z = b_dec
    y = _batch(16, 40)
    mse, l1, grads = sparse = _hand(sae, y, [0.1, 0.0], ALWAYS_SPARSE, buffers)
    assert buffers.active_share == [0.0, 0.0]
    assert bool((l1 == 0).all())
    for name in ("W_enc_KNJ", "b_enc_KJ", "W_dec_KJN"):
        assert bool((grads[name] == 0).all()), name
    _assert_same(sparse, _hand(sae, y, [0.1, 0.0], ALWAYS_DENSE, buffers))
    _assert_same(sparse, _autograd(sae, y, [0.1, 0.0]))


def test_sparse_path__a_pre_activation_of_exactly_zero_is_inactive():
    """ReLU'(0) = 0 on both paths: a latent whose pre-activation is exactly 0 learns nothing."""
    sae, buffers = _sae(16, 64, 1, True), StepBuffers()
    with torch.no_grad():
        sae.W_enc_KNJ[0, :, :3] = 0.0
        sae.b_enc_KJ[0, :3] = 0.0  # pre-activation 0 on every sample
    y = _batch(16, 80)
    sparse = _hand(sae, y, [0.1], ALWAYS_SPARSE, buffers)
    assert bool((sparse[2]["W_enc_KNJ"][0, :, :3] == 0).all()) and bool((sparse[2]["b_enc_KJ"][0, :3] == 0).all())
    _assert_same(sparse, _hand(sae, y, [0.1], ALWAYS_DENSE, buffers))


def test_active_share__is_none_until_counted_and_one_share_per_member():
    sae, y, buffers = _sae(16, 64, 3, True), _batch(16, 64), StepBuffers()
    assert buffers.active_share is None
    loss_and_grads(sae, y, [0.1] * 3, buffers=buffers)  # sparse_below=0 counts nothing
    assert buffers.active_share is None
    loss_and_grads(sae, y, [0.1] * 3, sparse_below=0.02, buffers=buffers)
    shares = buffers.active_share
    with torch.no_grad():
        want = (sae.encode(y) > 0).float().mean(dim=(1, 2)).tolist()
    assert shares == pytest.approx(want, abs=1e-7)
    loss_and_grads(sae, y, [0.1] * 3, buffers=buffers)
    assert buffers.active_share is None


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_loss_and_grads__rejects_sparse_below_outside_0_1(bad):
    with pytest.raises(ValueError, match=r"sparse_below must be a number in \[0, 1\]"):
        loss_and_grads(_sae(16, 64, 1, True), _batch(16, 8), [0.1], sparse_below=bad, buffers=StepBuffers())


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 12),
    j=st.integers(1, 40),
    b=st.integers(1, 60),
    k=st.integers(1, 3),
    offset=st.floats(-1.5, 0.5),
    alpha=st.sampled_from([0.0, 0.05, 1.0]),
    decoder_bias=st.booleans(),
)
def test_sparse_path__equals_dense_path_for_any_shape_and_sparsity(seed, n, j, b, k, offset, alpha, decoder_bias):
    sae = _sae(n, j, k, decoder_bias, seed=seed, offset=offset)
    y = _batch(n, b, seed=seed + 1)
    alpha_K = [alpha * (i + 1) for i in range(k)]
    buffers = StepBuffers()
    sparse = _hand(sae, y, alpha_K, ALWAYS_SPARSE, buffers)  # a member whose every code fires stays dense
    _assert_same(sparse, _hand(sae, y, alpha_K, ALWAYS_DENSE, buffers), tol=1e-4)


def _train(sparse_below: float, steps: int = 50) -> tuple[SAE, list[float]]:
    """What train.train does per step, from a fixed init on toy data; returns the SAE and the shares."""
    data = ToyFeatures(ToyDataConfig(n=16, h=32, mean_active=3.0))
    sae = _sae(16, 64, 2, True, offset=-0.4)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    batches, buffers = data.batches(128, seed=0), StepBuffers()
    shares = []
    for _ in range(steps):
        loss_and_grads(sae, next(batches), [0.05, 0.3], sparse_below=sparse_below, buffers=buffers)
        shares += buffers.active_share or []
        sae.project_decoder_grad_()
        opt.step()
        sae.normalise_decoder_()
    return sae, shares


def test_training_sparse_and_dense_from_the_same_init_gives_the_same_parameters():
    sparse, shares = _train(ALWAYS_SPARSE)
    dense, _ = _train(ALWAYS_DENSE)
    assert shares and max(shares) < ALWAYS_SPARSE  # every step of both members took the sparse path
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        err = (p - q).abs().max().item()
        assert err < 1e-4, f"{name} differs by {err:.2e} after 50 steps"
    assert not torch.equal(sparse.W_enc_KNJ, _sae(16, 64, 2, True, offset=-0.4).W_enc_KNJ)  # it did train


@pytest.mark.parametrize("sparse_below", [ALWAYS_DENSE, ALWAYS_SPARSE])
def test_loss_and_grads__skipped_members_cost_nothing_and_leave_the_others_unchanged(sparse_below):
    sae, y, buffers = _sae(16, 64, 3, True), _batch(16, 128), StepBuffers()
    full = _hand(sae, y, [0.1, 0.2, 0.3], sparse_below, buffers)
    mse_K, l1_K = loss_and_grads(sae, y, [0.1, 0.2, 0.3], sparse_below=sparse_below, skip={1}, buffers=buffers)
    assert torch.isnan(mse_K[1]) and torch.isnan(l1_K[1])
    for k in (0, 2):  # the other members' losses and gradients are those of the full call
        assert mse_K[k] == full[0][k] and l1_K[k] == full[1][k]
        for name, p in sae.named_parameters():
            assert torch.equal(p.grad[k], full[2][name][k]), name
    for name, p in sae.named_parameters():
        assert not p.grad[1].any(), f"{name}: a skipped member's gradient is zero"
