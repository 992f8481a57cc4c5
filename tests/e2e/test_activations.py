"""data=activations through the CLI: single runs and a multirun on a planted activation file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers.activation_files import indexed_rows, planted, save_rows
from tests.helpers.cli import REPO, run_cli

ROWS, N, EVAL = 5000, 16, 1000


# --- config validation ---------------------------------------------------------------------------------


def _truncated(tmp_path: Path) -> Path:
    path = save_rows(tmp_path, indexed_rows(), "truncated.npy")
    path.write_bytes(path.read_bytes()[:-1000])
    return path


# --- the whole run -------------------------------------------------------------------------------------


def test_cli__trains_on_a_planted_activation_file(tmp_path):
    path = planted(tmp_path)
    res = run_cli("data=activations", f"data.path={path}", "dict_size=32", "train.num_samples=20000",
                  "train.eval_every=10000", "train.progress=false", "logger.wandb.mode=disabled",
                  "data.eval_size=1024", f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in ("mse", "fvu", "l0", "dead"):
        assert summary[key] is not None, key
    assert summary["mmcs"] is None and summary["h"] is None and summary["n"] == N
    assert summary["data_path"] == str(path) and summary["data_rows"] == 20_000
    assert summary["fvu"] < 0.5
    assert not (run_dir / "ground_truth.safetensors").exists()
    assert (run_dir / "latents.safetensors").exists() and (run_dir / "sae.safetensors").exists()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "mmcs" not in rows[-1]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["data"]["kind"] == "activations" and cfg["data"]["n"] == N and cfg["data"]["path"] == str(path)


@pytest.mark.parametrize("bad", ["truncated", "n_mismatch"])
def test_cli__bad_activation_file_stops_with_one_line(tmp_path, bad):
    if bad == "truncated":
        args = [f"data.path={_truncated(tmp_path)}"]
        start = "sae_sweep: error: data.path: "
    else:
        args = [f"data.path={save_rows(tmp_path, indexed_rows())}", "data.n=8"]
        start = "sae_sweep: error: data.n must be"
    res = run_cli("data=activations", *args, "data.eval_size=100", "logger.wandb.mode=disabled",
                  f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("**/metrics.jsonl")), "training must not start"


def test_multirun__sweeps_an_activation_file_into_a_table_and_a_report_without_ground_truth(tmp_path):
    """A grid over J on real-style data: one row per cell, and the analysis runs with no true h."""
    from tests.helpers.sweep import cli_env, ok

    path = planted(tmp_path)
    sweep_dir = tmp_path / "sweep"
    proc = ok(subprocess.run(
        [sys.executable, "-m", "sae_sweep", "-m", "data=activations", f"data.path={path}", "data.eval_size=1024",
         "dict_size=8,16,32", "alpha=0.3", "train.num_samples=20000", "train.eval_every=10000",
         "train.progress=false", "train.threads=1", "logger.wandb.mode=disabled", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300))
    table = pd.read_parquet(sweep_dir / "runs.parquet")
    assert sorted(table["dict_size"]) == [8, 16, 32] and set(table["status"]) == {"completed"}
    assert table["mmcs"].isna().all() and table["fvu"].notna().all()
    blob = json.loads((sweep_dir / "estimates.json").read_text())
    (group,) = blob["groups"]
    assert group["true_h"] is None and group["cells"] == 3
    assert "agreement" in group["figures"] and "mmcs_heatmap" not in group["figures"]
    assert "estimate h" in proc.stdout
