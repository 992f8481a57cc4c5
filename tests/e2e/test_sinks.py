"""W&B details read back from the offline files with the real client: the upload, and the mirror of a run
dir after kills (one whole run, equal to metrics.jsonl, however the attempts died).
"""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

from sae_sweep.record import SUMMARY_FILE, run_dirs  # noqa: E402
from sae_sweep.run import run  # noqa: E402
from sae_sweep.sinks import analysis_run_id, log_report_run, offline_runs  # noqa: E402
from tests.helpers.build import build_cfg  # noqa: E402
from tests.helpers.cli import REPO  # noqa: E402
from tests.helpers.figure import figure  # noqa: E402
from tests.helpers.sweep import cli_env, killed_at, ok, run_sweep  # noqa: E402
from tests.helpers.wandb_offline import (
    as_metrics_rows,
    metrics_rows,
    read_wandb_offline_run,  # noqa: E402
)


def test_upload__finds_every_offline_run_of_a_sweep_and_wandb_sync_takes_them(tmp_path):
    sweep = tmp_path / "sweep"
    for i in range(2):
        run(build_cfg(wandb_mode="offline", seed=i), sweep / f"run_{i}")
    log_report_run(run_dir=sweep, mode="offline", project="p", name="sweep/analysis", group="sweep",
                   images={"all/fig": figure(tmp_path / "fig.png")}, summary={})
    # The real client, without network: --dry-run lists what `wandb sync` would upload.
    proc = subprocess.run([sys.executable, "-m", "sae_sweep.upload", str(sweep), "--dry-run"], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "3 offline W&B runs" in out and "Would sync 3 run(s)" in out, out
    assert str(sweep / "run_0" / "wandb") in out and analysis_run_id(sweep) in out
    plain = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(sweep)], env=cli_env(),
                           capture_output=True, text=True, timeout=120)
    assert "Would sync 3 run(s)" not in plain.stdout + plain.stderr  # why the command exists


def test_grid_resume__a_cell_killed_twice_ends_with_one_whole_wandb_run_equal_to_its_metrics(tmp_path):
    sweep, args = tmp_path / "grid", ("logger.wandb.mode=offline",)
    killed_at("wandb_log:2", sweep, *args)  # attempt 1 dies training, at its second evaluation
    (run_dir,) = run_dirs(sweep)
    assert not (run_dir / SUMMARY_FILE).exists()
    assert [r.exit_code for r in offline_runs(run_dir)] == [None]

    killed_at("wandb_finish", sweep, *args)  # attempt 2 writes its record, dies before its W&B run finishes
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["status"] == "completed"
    # Attempt 1's run is gone; attempt 2's has neither an exit record nor history (wandb-core buffers).
    assert [(r.run_id, r.exit_code, r.history) for r in offline_runs(run_dir)] == [(summary["wandb_run_id"], None, 0)]

    ok(run_sweep(sweep, *args))  # resume: the cell is finished, so only its mirror is written
    assert json.loads((run_dir / SUMMARY_FILE).read_text()) == summary  # not trained again
    wb = read_wandb_offline_run(run_dir)  # raises unless there is exactly one run
    assert wb["id"] == summary["wandb_run_id"] and wb["exit_code"] == 0
    assert len(summary["name"]) > 0 and wb["name"] == summary["name"] and wb["group"] == "smoke"
    assert as_metrics_rows(wb["history"]) == metrics_rows(run_dir) and len(wb["history"]) == 2
    assert wb["summary"]["status"] == "completed" and wb["summary"]["mmcs"] == summary["mmcs"]
    assert wb["config"]["alpha"] == summary["alpha"] and wb["config"]["logger"]["wandb"]["mode"] == "offline"


def test_optuna_resume__a_trial_whose_sweeper_died_in_its_wandb_finish_is_told_and_its_run_rewritten(tmp_path):
    import optuna

    from sae_sweep.sweep.storage import open_storage, storage_spec

    sweep = tmp_path / "optuna"
    args = ("hydra/sweeper=sae_optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null",
            "alpha=choice(0.3)", "logger.wandb.mode=offline")
    killed_at("wandb_finish", sweep, *args)  # the trial's record is written, its W&B run unfinished
    (run_dir,) = run_dirs(sweep)
    assert [r.exit_code for r in offline_runs(run_dir)] == [None]

    ok(run_sweep(sweep, *args))  # the dead sweeper's trial is told from its record, not run again
    (trial,) = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep))).get_trials()
    assert trial.state.name == "COMPLETE" and trial.user_attrs["recovered"] is True
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    wb = read_wandb_offline_run(run_dir)
    assert wb["id"] == summary["wandb_run_id"] and wb["exit_code"] == 0
    assert as_metrics_rows(wb["history"]) == metrics_rows(run_dir) and len(wb["history"]) == 2
    assert wb["summary"]["trial"] == wb["config"]["trial"] == 0
