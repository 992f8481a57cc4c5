"""The built wheel works outside the checkout: conf/ and the Hydra plugins ship inside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

from tests.helpers.cli import REPO

SOURCES = ("pyproject.toml", "README.md", "sae_sweep", "conf", "hydra_plugins")


def test_wheel__ships_configs_and_plugins_and_runs_away_from_the_checkout(tmp_path):
    src = tmp_path / "src"  # a clean copy, so no stale build/ of the checkout can leak into the wheel
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "whl"), str(src)],
                   check=True, capture_output=True, text=True)
    [wheel] = list((tmp_path / "whl").glob("sae_sweep-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sae_sweep/conf/config.yaml" in names and "sae_sweep/conf/experiment/smoke.yaml" in names
    assert "hydra_plugins/sae_sweep_plugins/__init__.py" in names and "hydra_plugins/__init__.py" not in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    where = subprocess.run([sys.executable, "-c", "import sae_sweep.__main__ as m; print(m.__file__, m.CONF_DIR)"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(tmp_path / "site" / "sae_sweep" / "__main__.py"), "pkg://sae_sweep.conf"]
    res = subprocess.run([sys.executable, "-m", "sae_sweep", "-m", "experiment=smoke", "alpha=0.5,1",
                          "hydra/launcher=packed",
                          "train.num_samples=5000", "train.eval_every=2500", "data.eval_size=256",
                          "train.progress=false"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (cwd / "outputs" / "smoke" / "runs.parquet").is_file()  # the sae_grid sweeper and its table
    assert "Launching 2 jobs packed" in res.stdout + res.stderr  # the packed launcher from the wheel
    [cell] = (cwd / "outputs" / "smoke").glob("alpha=1,*")  # run dirs are named by their overrides
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dict_size"] == 128


def test_installed_package__finds_its_hydra_plugins_from_any_directory(tmp_path):
    # Hydra discovers sweepers by scanning the hydra_plugins namespace; the install must expose it
    # outside the checkout too (run from an empty directory, not the repo root).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    res = subprocess.run([sys.executable, "-m", "sae_sweep", "--info", "plugins"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "SaeGridSweeper" in res.stdout and "SaeOptunaSweeper" in res.stdout and "PackedLauncher" in res.stdout
