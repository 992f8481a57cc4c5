"""W&B details read back from the offline files with the real client: the analysis run, the upload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sae_sweep.run import run  # noqa: E402
from sae_sweep.sinks import analysis_run_id, log_report_run, read_wandb_offline_run  # noqa: E402
from tests.conftest import REPO, build_cfg  # noqa: E402
from tests.sweep_helpers import cli_env  # noqa: E402


def _figure(path: Path) -> Path:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_log_report_run__a_second_analysis_of_a_sweep_resumes_its_one_run(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    image = _figure(tmp_path / "fig.png")
    for value in (48, 64):
        log_report_run(run_dir=sweep, mode="offline", project="p", name="sweep/analysis", group="sweep",
                       images={"all/fig": image}, summary={"all/consensus": value})
    assert len(list(sweep.glob("wandb/offline-run-*"))) == 1  # the superseded local copy is gone
    wb = read_wandb_offline_run(sweep)
    assert wb["id"] == analysis_run_id(sweep) and wb["exit_code"] == 0
    assert wb["summary"]["all/consensus"] == 64


def test_upload__finds_every_offline_run_of_a_sweep_and_wandb_sync_takes_them(tmp_path):
    sweep = tmp_path / "sweep"
    for i in range(2):
        run(build_cfg(wandb_mode="offline", seed=i), sweep / f"run_{i}")
    log_report_run(run_dir=sweep, mode="offline", project="p", name="sweep/analysis", group="sweep",
                   images={"all/fig": _figure(tmp_path / "fig.png")}, summary={})
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
