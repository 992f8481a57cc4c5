"""Padded stacked packs: members of different J, alpha and seed stepped as one batched computation
give every member its solo run, and the padding never fires and never reaches a record."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sae_sweep import packing
from sae_sweep.run import Job, run, run_packed
from sae_sweep.sae import SAE
from sae_sweep.step import StepBuffers, loss_and_grads, loss_and_grads_stacked
from tests.helpers.build import build_cfg
from tests.helpers.packed import assert_same_run

MIXED = [(0.1, 16, 0), (1.0, 24, 1), (0.3, 64, 0), (0.3, 16, 2), (1.0, 64, 1), (0.1, 48, 2)]  # (alpha, J, seed)


def _sae(j: int, seed: int, decoder_bias: bool = True, n: int = 16) -> SAE:
    """A single SAE away from its symmetric init (some codes fire, some do not)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(n, j, 1, decoder_bias=decoder_bias, generator=g)
    with torch.no_grad():
        sae.W_enc_KNJ.add_(0.3 * torch.randn(sae.W_enc_KNJ.shape, generator=g))
        sae.b_enc_KJ.copy_(0.2 * torch.randn(sae.b_enc_KJ.shape, generator=g) - 0.3)
        if decoder_bias:
            sae.b_dec_KN.copy_(0.3 * torch.randn(sae.b_dec_KN.shape, generator=g))
    return sae


def _own(t: torch.Tensor, name: str, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's tensor split into (its own latents, its padding)."""
    if name == "W_enc_KNJ":
        return t[:, :j], t[:, j:]
    if name in ("W_dec_KJN", "b_enc_KJ"):
        return t[:j], t[j:]
    return t, t[:0]


@pytest.mark.parametrize("decoder_bias", [True, False])
@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["solo-dense", "solo-sparse"])
def test_stacked_step__each_padded_member_gets_its_solo_loss_and_gradients_and_the_padding_none(decoder_bias, sparse_below):
    solos = [_sae(j, seed, decoder_bias) for seed, j in enumerate([8, 24, 16, 24, 5])]
    alphas, streams = [0.1, 0.0, 1.0, 0.3, 0.5], [0, 1, 1, 0, 2]
    y_SBN = torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(9))
    stack = SAE.stack(solos, pad=True)
    assert stack.padded and stack.sizes_K == [8, 24, 16, 24, 5] and stack.dict_size == 24
    mse_K, l1_K = loss_and_grads_stacked(stack, y_SBN, streams, alphas, buffers=StepBuffers())
    for k, solo in enumerate(solos):
        mse, l1 = loss_and_grads(solo, y_SBN[streams[k]], [alphas[k]], sparse_below=sparse_below, buffers=StepBuffers())
        assert mse_K[k].item() == pytest.approx(mse.item(), rel=1e-5)
        assert l1_K[k].item() == pytest.approx(l1.item(), rel=1e-5)  # normalised by its own J
        for (name, p_solo), p_stack in zip(solo.named_parameters(), stack.parameters(), strict=True):
            own, pad = _own(p_stack.grad[k], name, solo.dict_size)
            torch.testing.assert_close(own, p_solo.grad[0], rtol=1e-4, atol=1e-6, msg=name)
            assert bool((pad == 0).all()), f"{name}: padding got a gradient"


def test_padded_stack__padding_never_fires_stays_zero_through_training_and_views_cut_it():
    from sae_sweep.config import ToyDataConfig
    from sae_sweep.data.toy import ToyFeatures
    from sae_sweep.train import EvalSet, train

    data = ToyFeatures(ToyDataConfig(n=16, h=32, mean_active=3.0, eval_size=512))
    eval_set = EvalSet(data.eval_set(), data.ground_truth.features_HN)
    stack = SAE.stack([SAE(16, j, 1, generator=torch.Generator().manual_seed(j)) for j in (8, 32, 20)], pad=True)
    cfg = build_cfg(train={"num_samples": 12_800, "eval_every": 6_400}).train
    out = train(stack, [0.3, 0.3, 1.0], data.batches(128, 0), cfg, eval_set, [[]] * 3, stacked=[True])
    mask_KJ = stack.latent_mask_KJ()
    _, c_KBJ = stack(eval_set.y_BN)
    assert bool((c_KBJ[~mask_KJ[:, None, :].expand_as(c_KBJ)] == 0).all())  # padding never fires
    assert bool((c_KBJ[:, :, :8] > 0).any())  # ... while the real latents do
    assert bool((stack.W_enc_KNJ.transpose(1, 2)[~mask_KJ] == 0).all())
    assert bool((stack.W_dec_KJN[~mask_KJ] == 0).all()) and bool((stack.b_enc_KJ[~mask_KJ] == 0).all())
    for k, j in enumerate((8, 32, 20)):
        assert out[k].latent_frequency_J.shape == (j,) and out[k].weights.dict_size == j
        assert out[k].final["dead"] + out[k].final["alive"] == j
        assert stack.dictionary(k).shape == (j, 16)


@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["solo-dense", "solo-sparse"])
def test_run_packed__mixed_j_alpha_and_seed_in_one_padded_group_equal_their_solo_runs(tmp_path, sparse_below):
    cfgs = [build_cfg(alpha=a, dict_size=j, seed=s, train={"lanes": 1}) for a, j, s in MIXED]
    parts = packing.plan([c.dict_size for c in cfgs], [c.seed for c in cfgs], 16, 128, 1)
    assert parts == [packing.Part(list(range(len(cfgs))), True)]  # one padded group, three streams
    packed = run_packed([Job(c, tmp_path / f"packed_{i}") for i, c in enumerate(cfgs)])
    for i, cfg in enumerate(cfgs):
        solo_cfg = build_cfg(alpha=cfg.alpha, dict_size=cfg.dict_size, seed=cfg.seed,
                             train={"stacked": "never", "sparse_below": sparse_below})
        solo = run(solo_cfg, tmp_path / f"solo_{i}")
        assert_same_run(tmp_path / f"packed_{i}", tmp_path / f"solo_{i}", packed[i], solo)
        # No padded latent reaches a record: every file has the member's own J.
        d, j = tmp_path / f"packed_{i}", cfg.dict_size
        assert load_file(str(d / "sae.safetensors"))["W_dec"].shape == (16, j)
        assert json.loads((d / "cfg.json").read_text())["dict_size"] == j
        assert load_file(str(d / "latents.safetensors"))["frequency"].shape == (j,)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["dead"] + summary["alive"] == j and summary["dict_size"] == j
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert all(r["dead"] + r["alive"] == j for r in rows)


def test_run_packed__stopped_members_leave_the_stack_and_the_others_still_equal_their_solo_runs(tmp_path):
    cfgs = [build_cfg(alpha=a, dict_size=j, seed=s, train={"lanes": 1, "num_samples": 40_000})
            for a, j, s in MIXED[:4]]
    stop_at = {1: 20_000, 2: 30_000}  # the 24- and the 64-latent member: the stack shrinks to J=16

    def hook(i: int):
        return None if i not in stop_at else (lambda m, samples, row: samples >= stop_at[i])

    packed = run_packed([Job(c, tmp_path / f"p{i}", should_stop=hook(i)) for i, c in enumerate(cfgs)])
    assert [s["status"] for s in packed] == ["completed", "pruned", "pruned", "completed"]
    for i, cfg in enumerate(cfgs):
        samples = packed[i]["samples"]
        solo_cfg = build_cfg(alpha=cfg.alpha, dict_size=cfg.dict_size, seed=cfg.seed,
                             train={"stacked": "never", "num_samples": samples})
        solo = run(solo_cfg, tmp_path / f"s{i}")
        solo["status"] = packed[i]["status"] = "completed"
        assert_same_run(tmp_path / f"p{i}", tmp_path / f"s{i}", packed[i], solo)


def test_run_packed__convergence_stops_each_padded_member_as_its_solo_run(tmp_path):
    train = {"lanes": 1, "num_samples": 60_000, "eval_every": 5_000, "converge": True,
             "converge_loss_rtol": 0.3, "converge_drift": 0.3, "converge_patience": 1}
    cfgs = [build_cfg(alpha=a, dict_size=j, seed=s, train=train) for a, j, s in MIXED]
    packed = run_packed([Job(c, tmp_path / f"p{i}") for i, c in enumerate(cfgs)])
    for i, cfg in enumerate(cfgs):
        solo = run(build_cfg(alpha=cfg.alpha, dict_size=cfg.dict_size, seed=cfg.seed,
                             train={**train, "stacked": "never"}), tmp_path / f"s{i}")
        assert (packed[i]["samples"], packed[i]["converged"]) == (solo["samples"], solo["converged"]), i
        assert_same_run(tmp_path / f"p{i}", tmp_path / f"s{i}", packed[i], solo)


def test_plan__small_sizes_bucket_by_cost_large_ones_step_per_member_and_lanes_get_a_group_each():
    # Quickstart shapes on CPU: padding 16 to 32 saves a group's overhead, 64 to 128 would cost more.
    sizes = [j for j in (16, 32, 64, 128) for _ in range(6)]
    parts = packing.plan(sizes, [i % 2 for i in range(24)], 32, 256, 1)
    assert [sorted({sizes[i] for i in p.members}) for p in parts] == [[16, 32], [64], [128]]
    assert all(p.stacked for p in parts)
    # On CUDA the overhead dominates: one padded group.
    assert len(packing.plan(sizes, [0] * 24, 32, 256, 1, "cuda")) == 1
    # n=256, J >= 512: today's per-member groups, one per J and stream (and lane).
    big = packing.plan([512, 512, 1024, 1024], [0, 1, 0, 0], 256, 256, 2)
    assert not any(p.stacked for p in big)
    assert sorted(sorted(p.members) for p in big) == [[0], [1], [2], [3]]
    # Two lanes: a single bucket is split in two halves that keep its mix of J.
    two = packing.plan([16, 16, 32, 32], [0, 0, 0, 0], 16, 128, 2)
    assert len(two) == 2 and all(sorted(sizes_) == [16, 32] for sizes_ in
                                 ([[16, 16, 32, 32][i] for i in p.members] for p in two))
    assert packing.plan(sizes, [0] * 24, 32, 256, 1, stacked="never")[0].stacked is False
