"""The convergence rule: the tracker on planted evaluations, and real toy runs that stop by it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_sweep.convergence import ConvergenceRule, ConvergenceTracker
from sae_sweep.run import Job, run, run_packed
from tests.helpers.build import build_cfg

RULE = ConvergenceRule(loss_rtol=0.01, drift=0.01, patience=2)


pytestmark = pytest.mark.slow  # minutes of real CLI runs: pytest -n 2 -m slow

def _atoms(j: int = 4, n: int = 3, seed: int = 0) -> torch.Tensor:
    a = torch.randn(j, n, generator=torch.Generator().manual_seed(seed))
    return a / a.norm(dim=1, keepdim=True)


def test_tracker__first_evaluation_has_no_change_and_is_not_converged():
    t = ConvergenceTracker(RULE, 1)
    out = t.update(0, 100_000, 1.0, _atoms(), torch.ones(4))
    assert math.isnan(out["loss_change"]) and math.isnan(out["atom_drift"]) and out["converged"] == 0.0


def test_tracker__converged_after_patience_flat_evaluations_and_a_jump_resets_it():
    t, atoms, f = ConvergenceTracker(RULE, 1), _atoms(), torch.ones(4)
    t.update(0, 1_000_000, 1.0, atoms, f)
    assert t.update(0, 2_000_000, 1.001, atoms, f)["converged"] == 0.0  # one flat window
    assert t.update(0, 3_000_000, 1.002, atoms, f)["converged"] == 1.0  # two in a row
    assert t.update(0, 4_000_000, 1.2, atoms, f)["converged"] == 0.0  # the loss moved: start again
    assert not t.converged(0)


def test_tracker__rates_are_per_million_samples():
    atoms, f = _atoms(), torch.ones(4)
    short, long = ConvergenceTracker(RULE, 1), ConvergenceTracker(RULE, 1)
    short.update(0, 250_000, 1.0, atoms, f)
    long.update(0, 1_000_000, 1.0, atoms, f)
    a = short.update(0, 500_000, 1.01, atoms, f)["loss_change"]
    b = long.update(0, 2_000_000, 1.01, atoms, f)["loss_change"]
    assert a == pytest.approx(4 * b)  # the same change in a quarter of the samples is four times the rate
    assert b == pytest.approx(0.01 / 1.01)


def test_tracker__drift_is_weighted_by_firing_frequency_and_dead_latents_weigh_nothing():
    t, atoms = ConvergenceTracker(RULE, 1), _atoms()
    t.update(0, 1_000_000, 1.0, atoms, torch.ones(4))
    moved = atoms.clone()
    moved[0] = -moved[0]  # latent 0 flips: 1 - cos = 2
    assert t.update(0, 2_000_000, 1.0, moved, torch.tensor([0.0, 1.0, 1.0, 1.0]))["atom_drift"] == pytest.approx(0.0, abs=1e-6)
    t2 = ConvergenceTracker(RULE, 1)
    t2.update(0, 1_000_000, 1.0, atoms, torch.ones(4))
    assert t2.update(0, 2_000_000, 1.0, moved, torch.tensor([1.0, 1.0, 1.0, 1.0]))["atom_drift"] == pytest.approx(0.5)


def test_tracker__members_are_independent():
    t, atoms, f = ConvergenceTracker(RULE, 2), _atoms(), torch.ones(4)
    for step in range(1, 4):
        t.update(0, step * 1_000_000, 1.0, atoms, f)
        t.update(1, step * 1_000_000, float(step), atoms, f)  # member 1's loss keeps moving
    assert t.converged(0) and not t.converged(1)


# --- real runs -----------------------------------------------------------------------------------
def _cfg(j: int, **train):
    return build_cfg(dict_size=j, sae={"l1_norm": "inputs"}, data={"eval_size": 1024},
                     train={"batch_size": 256, "num_samples": 3_000_000, "eval_every": 125_000, **train})


def test_run__a_converged_run_is_within_0_01_mmcs_of_the_same_run_trained_4x_longer(tmp_path):
    stopped = run(_cfg(32, converge=True), tmp_path / "stopped")
    assert stopped["status"] == "completed" and stopped["converged"] is True
    assert stopped["samples"] < 3_000_000 and stopped["message"].startswith("converged at sample")
    assert stopped["loss_change"] <= 0.005 and stopped["atom_drift"] <= 0.015  # the defaults held
    longer = run(_cfg(32, num_samples=4 * stopped["samples"]), tmp_path / "longer")
    assert longer["samples"] == pytest.approx(4 * stopped["samples"], rel=0.01)
    assert abs(longer["mmcs"] - stopped["mmcs"]) <= 0.01
    rows = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["samples"] == stopped["samples"] and {"loss_change", "atom_drift"} <= set(rows[-1])


def test_run__a_run_stopped_by_the_cap_is_flagged_unconverged(tmp_path):
    capped = run(_cfg(32, converge=True, num_samples=250_000), tmp_path)  # two evaluations: one change, no patience
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert capped["status"] == on_disk["status"] == "completed"
    assert capped["converged"] is False and on_disk["converged"] is False
    assert capped["samples"] == 250_000 - 250_000 % 256


def test_run_packed__each_member_stops_on_its_own_at_its_solo_sample(tmp_path):
    cfgs = [_cfg(32, converge=True), _cfg(64, converge=True, batch_seed=0)]
    cfgs[0].train.batch_seed, cfgs[1].alpha = 0, 1.0  # one batch stream, so they pack
    packed = run_packed([Job(c, tmp_path / f"packed_{i}") for i, c in enumerate(cfgs)])
    solo = [run(c, tmp_path / f"solo_{i}") for i, c in enumerate(cfgs)]
    assert all(p["converged"] is s["converged"] is True for p, s in zip(packed, solo, strict=True))
    assert [p["samples"] for p in packed] == [s["samples"] for s in solo]
    assert packed[0]["samples"] < packed[1]["samples"] < 3_000_000  # each stopped at its own evaluation
    for p, s in zip(packed, solo, strict=True):
        assert p["mmcs"] == pytest.approx(s["mmcs"], abs=1e-4)
