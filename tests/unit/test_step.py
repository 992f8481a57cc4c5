"""The hand-written step: the same loss and gradients as autograd through SAE.loss, and it trains."""

from __future__ import annotations

import pytest
import torch

from sae_sweep.config import ToyDataConfig
from sae_sweep.data.toy import ToyFeatures
from sae_sweep.sae import SAE
from sae_sweep.step import StepBuffers, loss_and_grads

N, J = 16, 64


def _sae(k: int, decoder_bias: bool, seed: int = 0, dead: int = 0) -> SAE:
    """An SAE away from its symmetric init (random biases), with the first ``dead`` latents dead."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(N, J, k, decoder_bias=decoder_bias, generator=g)
    with torch.no_grad():
        sae.W_enc_KNJ.add_(0.3 * torch.randn(sae.W_enc_KNJ.shape, generator=g))
        sae.b_enc_KJ.copy_(0.2 * torch.randn(sae.b_enc_KJ.shape, generator=g))
        sae.b_enc_KJ[:, :dead] = -1e3  # pre-activation < 0 on every sample: never fires
        if decoder_bias:
            sae.b_dec_KN.copy_(0.3 * torch.randn(sae.b_dec_KN.shape, generator=g))
    return sae


def _batch(b: int = 200, seed: int = 1) -> torch.Tensor:
    return ToyFeatures(ToyDataConfig(n=N, h=32, mean_active=3.0)).sample(b, torch.Generator().manual_seed(seed))


def _autograd(sae: SAE, y: torch.Tensor, alpha_K: list[float]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    for p in sae.parameters():
        p.grad = None
    loss_K, mse_K, l1_K = sae.loss(y, torch.tensor(alpha_K))
    loss_K.sum().backward()  # members are independent, so each gets its own loss's gradient
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return mse_K.detach(), l1_K.detach(), grads


def _hand(sae: SAE, y: torch.Tensor, alpha_K: list[float],
          buffers: StepBuffers) -> tuple[torch.Tensor, torch.Tensor, dict]:
    mse_K, l1_K = loss_and_grads(sae, y, alpha_K, buffers=buffers)
    return mse_K, l1_K, {name: p.grad.clone() for name, p in sae.named_parameters()}


def _assert_grads_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        scale = w.abs().max().clamp_min(1e-12)
        err = (got[name] - w).abs().max() / scale
        assert err < 1e-5, f"{name}: max error {err:.2e} of the largest gradient entry"


@pytest.mark.parametrize("decoder_bias", [True, False])
@pytest.mark.parametrize("alpha_K", [[0.1], [0.0], [0.0, 0.05, 1.0]], ids=["K1-alpha0.1", "K1-alpha0", "K3"])
def test_loss_and_grads__matches_autograd(alpha_K, decoder_bias):
    sae = _sae(len(alpha_K), decoder_bias, dead=5)
    y = _batch()
    mse_h, l1_h, grads_h = _hand(sae, y, alpha_K, StepBuffers())
    mse_a, l1_a, grads_a = _autograd(sae, y, alpha_K)
    assert torch.allclose(mse_h, mse_a, rtol=1e-5)
    assert torch.allclose(l1_h, l1_a, rtol=1e-5)
    _assert_grads_close(grads_h, grads_a)
    assert ("b_dec_KN" in grads_h) == decoder_bias  # a fixed decoder bias is a buffer, not learned


def test_loss_and_grads__dead_latents_get_no_encoder_or_decoder_gradient():
    sae = _sae(2, True, dead=7)
    _, _, grads = _hand(sae, _batch(), [0.1, 0.5], StepBuffers())
    assert bool((grads["W_enc_KNJ"][:, :, :7] == 0).all())
    assert bool((grads["b_enc_KJ"][:, :7] == 0).all())
    assert bool((grads["W_dec_KJN"][:, :7] == 0).all())
    assert bool((grads["W_enc_KNJ"][:, :, 7:] != 0).any())  # the live ones do learn


def test_loss_and_grads__overwrites_gradients_and_follows_a_new_batch_shape():
    sae, buffers = _sae(2, True), StepBuffers()
    alpha_K = [0.1, 0.3]
    first = _hand(sae, _batch(64, seed=2), alpha_K, buffers)
    again = _hand(sae, _batch(64, seed=2), alpha_K, buffers)  # gradients are replaced, not accumulated
    for name in first[2]:
        assert torch.equal(first[2][name], again[2][name])
    y = _batch(37, seed=3)  # a different batch size rebuilds the reused buffers
    mse_h, l1_h, grads_h = _hand(sae, y, alpha_K, buffers)
    mse_a, l1_a, grads_a = _autograd(sae, y, alpha_K)
    assert torch.allclose(mse_h, mse_a, rtol=1e-5) and torch.allclose(l1_h, l1_a, rtol=1e-5)
    _assert_grads_close(grads_h, grads_a)


def test_loss_and_grads__rejects_a_batch_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"y_BN must have shape \(B, 16\)"):
        loss_and_grads(_sae(1, True), torch.randn(8, N + 1), [0.1], buffers=StepBuffers())


def test_project_decoder_grad__removes_the_component_along_each_atom():
    sae = _sae(3, True)
    g = torch.randn(sae.W_dec_KJN.shape, generator=torch.Generator().manual_seed(4))
    sae.W_dec_KJN.grad = g.clone()
    sae.project_decoder_grad_()
    w = sae.W_dec_KJN.detach()  # unit-norm atoms
    projected = sae.W_dec_KJN.grad
    assert (projected * w).sum(dim=-1).abs().max() < 1e-5  # nothing left along the atom
    parallel = (g * w).sum(dim=-1, keepdim=True) * w
    assert torch.allclose(projected, g - parallel, atol=1e-6)  # the orthogonal part is untouched


def test_train_step__reduces_loss_on_toy_data():
    data = ToyFeatures(ToyDataConfig(n=N, h=32, mean_active=3.0))
    sae = SAE(N, J, 2, generator=torch.Generator().manual_seed(0))
    alpha_K = [0.03, 0.3]
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3, fused=True)
    held_out = data.eval_set()[:2048]
    with torch.no_grad():
        before = sae.loss(held_out, torch.tensor(alpha_K))[0]
    batches, buffers = data.batches(128, seed=0), StepBuffers()
    for _ in range(300):  # what train.train does per step
        loss_and_grads(sae, next(batches), alpha_K, buffers=buffers)
        sae.project_decoder_grad_()
        opt.step()
        sae.normalise_decoder_()
    with torch.no_grad():
        after = sae.loss(held_out, torch.tensor(alpha_K))[0]
    assert bool((after < 0.5 * before).all()), (before, after)
    assert torch.allclose(sae.W_dec_KJN.norm(dim=-1), torch.ones(2, J), atol=1e-5)


def test_loss_and_grads__without_l1_gives_the_same_gradients_and_mse():
    sae = SAE(16, 48, k=2, generator=torch.Generator().manual_seed(4))
    y, buffers = torch.rand(64, 16, generator=torch.Generator().manual_seed(5)), StepBuffers()
    mse_a, l1_a = loss_and_grads(sae, y, [0.2, 0.5], buffers=buffers)
    grads_a = [p.grad.clone() for p in sae.parameters()]
    mse_b, l1_b = loss_and_grads(sae, y, [0.2, 0.5], with_l1=False, buffers=buffers)
    assert l1_b is None and l1_a is not None
    assert torch.equal(mse_a, mse_b)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads_a, sae.parameters(), strict=True))
