"""sae_sweep.adam: the trainer's Adam equals torch.optim.Adam(fused=True) bit for bit, and costs no dynamo import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sae_sweep.adam import Adam


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 7, generator=g, requires_grad=True), torch.randn(7, generator=g, requires_grad=True),
            torch.randn(3, 5, 7, generator=g, requires_grad=True)]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) * (1 + step) for p in params]


@pytest.mark.parametrize("fused", [True, False])
def test_adam__equals_torch_optim_adam_fused_bit_for_bit_over_many_steps(fused):
    ours, theirs = _params(0), _params(0)
    opt = Adam(ours, lr=3e-3, fused=fused)  # not fused: what devices without the kernel run
    ref = torch.optim.Adam(theirs, lr=3e-3, fused=True)
    for step in range(30):
        for p, q, g in zip(ours, theirs, _grads(ours, step), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        # A parameter without a gradient is left alone by both (its state not made either).
        if step % 7 == 3:
            ours[1].grad = theirs[1].grad = None
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs, strict=True):
            if fused:
                assert torch.equal(p, q)
            else:
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    for p, q in zip(ours, theirs, strict=True):
        assert set(opt.state[p]) == set(ref.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(opt.state[p]["step"]) == float(ref.state[q]["step"])
        tol = {"rtol": 0, "atol": 0} if fused else {"rtol": 1e-6, "atol": 1e-7}
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], **tol)


def test_adam__state_is_made_at_a_parameters_first_step_and_read_back_as_torch_optim_does():
    (p,) = _params(1)[:1]
    opt = Adam([p], lr=1e-3)
    assert dict(opt.state) == {} and opt.defaults["fused"] is True
    p.grad = torch.ones_like(p)
    opt.step()
    st = opt.state[p]
    assert st["step"].dtype == torch.float32 and float(st["step"]) == 1.0 and st["exp_avg"].shape == p.shape


def test_adam__bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="at least one parameter"):
        Adam([], lr=1e-3)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        Adam(_params(0), lr=0)


def test_adam__a_training_step_does_not_import_torch_dynamo():
    # torch.optim's optimiser imports torch._dynamo on construction (~1 s per process); ours must not.
    code = ("import sys, torch; from sae_sweep.adam import Adam; p = torch.zeros(3, requires_grad=True); "
            "o = Adam([p], lr=0.1); p.grad = torch.ones(3); o.step(); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
