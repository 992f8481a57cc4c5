"""Packed training: a group of runs on one stream of batches gives every run its solo result."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_sweep.run import Job, pack_key, run, run_packed
from sae_sweep.sae import SAE
from tests.helpers.build import build_cfg
from tests.helpers.packed import assert_same_run
from tests.helpers.wandb_offline import read_wandb_offline_run


def test_run_packed__members_differing_in_alpha_seed_and_dict_size_equal_their_solo_runs(tmp_path):
    cfgs = [build_cfg(alpha=a, dict_size=j, seed=s, train={"batch_seed": 7, "lanes": 3})  # three threads, whatever the CPU
            for a, j, s in [(0.1, 32, 0), (1.0, 32, 1), (0.3, 64, 0), (0.3, 48, 2), (1.0, 64, 3)]]
    assert len({pack_key(c) for c in cfgs}) == 1
    packed = run_packed([Job(c, tmp_path / f"packed_{i}") for i, c in enumerate(cfgs)])
    for i, cfg in enumerate(cfgs):
        solo = run(cfg, tmp_path / f"solo_{i}")
        assert_same_run(tmp_path / f"packed_{i}", tmp_path / f"solo_{i}", packed[i], solo)
        assert packed[i]["dict_size"] == cfg.dict_size and packed[i]["seed"] == cfg.seed
    # The members really differ: different seeds and alphas give different dictionaries.
    assert packed[0]["loss"] != pytest.approx(packed[1]["loss"], rel=1e-3)


def test_run_packed__a_diverging_member_fails_alone(tmp_path):
    good = build_cfg(alpha=0.3)
    bad = build_cfg(alpha=0.3, dict_size=32, sae={"init_scale": 1e30})  # codes ~1e30: the loss overflows
    out = run_packed([Job(good, tmp_path / "good"), Job(bad, tmp_path / "bad")])
    assert out[0]["status"] == "completed" and out[1]["status"] == "diverged", out[1]
    solo = run(good, tmp_path / "solo")
    assert_same_run(tmp_path / "good", tmp_path / "solo", out[0], solo)
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["status"] == "diverged"


def test_run_packed__a_pruned_member_keeps_its_weights_from_when_it_stopped(tmp_path):
    cfg = build_cfg(train={"num_samples": 40_000, "eval_every": 10_000})

    def stop(member: int, samples: int, row: dict) -> bool:
        return samples >= 20_000

    out = run_packed([Job(cfg, tmp_path / "pruned", should_stop=stop), Job(cfg, tmp_path / "full")])
    assert out[0]["status"] == "pruned" and out[0]["samples"] < 40_000
    assert out[1]["status"] == "completed" and out[1]["samples"] == (40_000 // 128) * 128
    run(build_cfg(train={"num_samples": out[0]["samples"], "eval_every": 10_000}), tmp_path / "short")
    a, b = SAE.load(tmp_path / "pruned"), SAE.load(tmp_path / "short")
    torch.testing.assert_close(a.W_dec_KJN, b.W_dec_KJN, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a.W_dec_KJN, SAE.load(tmp_path / "full").W_dec_KJN)


def test_run_packed__every_member_gets_its_own_wandb_run(tmp_path):
    cfgs = [build_cfg(alpha=a, wandb_mode="offline") for a in (0.1, 1.0)]
    run_packed([Job(c, tmp_path / f"m{i}", run_name=f"alpha={c.alpha}", group="pack") for i, c in enumerate(cfgs)])
    for i, cfg in enumerate(cfgs):
        wb = read_wandb_offline_run(tmp_path / f"m{i}")
        assert wb["name"] == f"alpha={cfg.alpha}" and wb["group"] == "pack" and wb["exit_code"] == 0
        assert wb["config"]["alpha"] == cfg.alpha and len(wb["history"]) == 2
        assert math.isfinite(wb["history"][-1]["loss"])


def test_run_packed__refuses_jobs_that_cannot_share_a_pack(tmp_path):
    assert pack_key(build_cfg(seed=0)) == pack_key(build_cfg(seed=1))  # other streams pack: each reads its own
    with pytest.raises(ValueError, match="training schedule"):
        run_packed([Job(build_cfg(), tmp_path / "a"), Job(build_cfg(train={"lr": 3e-3}), tmp_path / "b")])
    with pytest.raises(ValueError, match="training schedule"):
        run_packed([Job(build_cfg(), tmp_path / "a"), Job(build_cfg(data={"h": 48}), tmp_path / "b")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sparse_below", [None, 1.0])  # null is dense on CUDA; 1.0 runs the sparse kernels there
def test_run_packed__on_cuda_members_equal_their_solo_runs_and_the_cpu_result(tmp_path, sparse_below):
    train = {"device": "cuda", "sparse_below": sparse_below}
    cfgs = [build_cfg(alpha=a, dict_size=j, train=train) for a, j in [(0.1, 32), (1.0, 64), (0.3, 64)]]
    packed = run_packed([Job(c, tmp_path / f"packed_{i}") for i, c in enumerate(cfgs)])
    for i, cfg in enumerate(cfgs):
        solo = run(cfg, tmp_path / f"solo_{i}")
        assert_same_run(tmp_path / f"packed_{i}", tmp_path / f"solo_{i}", packed[i], solo)
        cpu = run(build_cfg(alpha=cfg.alpha, dict_size=cfg.dict_size), tmp_path / f"cpu_{i}")
        assert packed[i]["device"].startswith("cuda")
        assert packed[i]["loss"] == pytest.approx(cpu["loss"], rel=1e-2)
