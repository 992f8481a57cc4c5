"""The SAE module: shapes, unit-norm decoder, persistence without pickle."""

from __future__ import annotations

import json

import torch

from sae_sweep.sae import SAE


def test_forward__shapes_for_k_members_on_a_shared_batch():
    sae = SAE(8, 20, k=3, generator=torch.Generator().manual_seed(0))
    z, c = sae(torch.randn(5, 8))
    assert z.shape == (3, 5, 8) and c.shape == (3, 5, 20)
    assert bool((c >= 0).all())


def test_decoder__starts_unit_norm_and_normalise_restores_it():
    sae = SAE(8, 20, k=2)
    assert torch.allclose(sae.W_dec_KJN.norm(dim=-1), torch.ones(2, 20), atol=1e-5)
    with torch.no_grad():
        sae.W_dec_KJN.mul_(3.0)
    sae.normalise_decoder_()
    assert torch.allclose(sae.W_dec_KJN.norm(dim=-1), torch.ones(2, 20), atol=1e-5)


def test_save_load__round_trips_through_safetensors(tmp_path):
    sae = SAE(8, 20, k=2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.b_enc_KJ.normal_()
        sae.b_dec_KN.normal_()
    sae.save(tmp_path, 1, extra={"alpha": 0.1})
    loaded = SAE.load(tmp_path)
    y = torch.randn(4, 8)
    assert torch.allclose(loaded(y)[0][0], sae(y)[0][1], atol=1e-6)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["n"] == 8 and cfg["dict_size"] == 20 and cfg["alpha"] == 0.1


def test_member__is_a_detached_single_copy():
    sae = SAE(4, 6, k=3)
    one = sae.member(2)
    assert one.k == 1 and torch.equal(one.W_dec_KJN[0], sae.W_dec_KJN[2])
