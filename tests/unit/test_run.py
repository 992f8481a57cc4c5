"""A whole run's record: files, summary, weights, W&B offline run read back from disk."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from sae_sweep.run import run
from sae_sweep.sae import SAE
from tests.helpers.build import build_cfg
from tests.helpers.wandb_offline import read_wandb_offline_run


def test_run__writes_the_complete_record(tmp_path):
    summary = run(build_cfg(), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "sae.safetensors", "cfg.json",
            "ground_truth.safetensors"} <= names
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == summary["status"] == "completed"
    for key in ("mmcs", "mmcs_learned", "recovered_90", "recovered_99", "fvu", "l0", "dead", "loss",
                "train_time_s", "wall_time_s", "samples_per_s", "loss_normalisation", "eval_size"):
        assert on_disk[key] is not None, key
    assert on_disk["versions"]["torch"].startswith("2.")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [10112, 19968]
    assert rows[-1]["mmcs"] == pytest.approx(on_disk["mmcs"])
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg["alpha"] == 0.3 and cfg["data"]["h"] == 32
    truth = load_file(str(tmp_path / "ground_truth.safetensors"))
    assert truth["F"].shape == (16, 32) and truth["probabilities"].shape == (32,)
    assert SAE.load(tmp_path).dict_size == 64


def test_run__diverging_run_is_recorded_as_diverged(tmp_path):
    summary = run(build_cfg(train={"lr": 1e30}), tmp_path)
    assert summary["status"] == "diverged"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_run__wandb_offline_run_is_readable_from_disk(tmp_path):
    summary = run(build_cfg(wandb_mode="offline"), tmp_path, run_name="alpha=0.3", group="g1")
    wb = read_wandb_offline_run(tmp_path)
    assert wb["name"] == "alpha=0.3" and wb["group"] == "g1" and wb["exit_code"] == 0
    assert [row["_step"] for row in wb["history"]] == [10112, 19968]
    assert wb["history"][-1]["mmcs"] == pytest.approx(summary["mmcs"])
    assert wb["summary"]["status"] == "completed"
    assert wb["config"]["alpha"] == 0.3 and wb["config"]["data"]["h"] == 32


def test_run__wandb_run_of_a_diverged_job_is_finished_as_failed(tmp_path):
    run(build_cfg(wandb_mode="offline", train={"lr": 1e30}), tmp_path)
    wb = read_wandb_offline_run(tmp_path)
    assert wb["exit_code"] == 1 and wb["summary"]["status"] == "diverged"


def test_run__wandb_run_of_a_pruned_trial_finishes_as_pruned_with_its_trial_number(tmp_path):
    summary = run(build_cfg(wandb_mode="offline"), tmp_path, should_stop=lambda *_: True, trial=7)
    assert summary["status"] == "pruned" and summary["trial"] == 7
    wb = read_wandb_offline_run(tmp_path)
    assert wb["exit_code"] == 0 and wb["summary"]["pruned"] is True and "pruned" in wb["tags"]
    assert wb["summary"]["trial"] == 7 and wb["config"]["trial"] == 7


def test_run__completed_wandb_run_is_not_marked_pruned(tmp_path):
    run(build_cfg(wandb_mode="offline"), tmp_path)
    wb = read_wandb_offline_run(tmp_path)
    assert wb["exit_code"] == 0 and wb["summary"]["pruned"] is False and "pruned" not in wb["tags"]
