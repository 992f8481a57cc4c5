"""Launchers (submitit's local executor standing in for SLURM) and looking at a study with optuna-dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers.sweep import REPO, cli_env, free_port, ok, run_sweep, table


def test_submitit__a_grid_runs_through_submitit_and_a_failed_cell_does_not_stop_it(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    ok(run_sweep(sweep, "hydra/launcher=submitit_local", f"hydra.launcher.submitit_folder={sweep}/.submitit/%j",
                 "train.lr=0.001,1e30"))  # lr=1e30 diverges (an invalid cell would stop the grid before it starts)
    df = table(sweep)
    assert sorted(df["status"]) == ["completed", "diverged"]
    assert list((sweep / ".submitit").iterdir())  # the jobs really went through submitit


def test_submitit__optuna_trials_in_submitit_jobs_reach_their_trial_and_get_pruned(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from sae_sweep.sweep.storage import open_storage, storage_spec

    sweep = tmp_path / "study"
    common = ("hydra/sweeper=sae_optuna", "train.num_samples=10000", "hydra.sweeper.pruner=median",
              "+hydra.sweeper.pruner_kwargs.n_startup_trials=1", "+hydra.sweeper.pruner_kwargs.n_warmup_steps=0")
    ok(run_sweep(sweep, *common, "hydra.sweeper.n_trials=1", "train.lr=tag(log,interval(0.009,0.011))"))
    ok(run_sweep(sweep, *common, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                 "hydra/launcher=submitit_local", f"hydra.launcher.submitit_folder={sweep}/.submitit/%j",
                 "train.lr=tag(log,interval(1e-8,1e-7))"))
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage_spec(None, sweep)))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]


def test_submitit__slurm_launcher_config_composes_with_project_defaults() -> None:
    proc = subprocess.run([sys.executable, "-m", "sae_sweep", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                           "--cfg", "hydra", "-p", "hydra.launcher"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    assert "submitit_folder: ${hydra.sweep.dir}/.submitit/%j" in proc.stdout


def test_dashboard__optuna_dashboard_serves_the_sweeps_study_on_localhost(tmp_path: Path) -> None:
    sweep = tmp_path / "study"
    ok(run_sweep(sweep, "hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=1", "alpha=interval(0.1,0.3)"))
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen([str(dashboard), f"sqlite:///{sweep / 'optuna.db'}", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=cli_env())
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                assert server.poll() is None, "optuna-dashboard exited"
                time.sleep(0.2)
        assert body is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["smoke"]
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
