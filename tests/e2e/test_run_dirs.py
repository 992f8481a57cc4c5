"""A run dir belongs to one cell: sweeps whose cells share a dir name never replace each other's records.

Run dir names leave out ``experiment`` and ``data.path`` (conf/config.yaml), so two sweeps of one
name that differ only there are given the same names; each is run through the real CLI here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.sweep import TINY, cli_env, ok, run_sweep, table

QUIET = ["logger.wandb.mode=disabled", "train.threads=1", "train.progress=false", "train.save_weights=false"]


def sweep(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return ok(subprocess.run([sys.executable, "-m", "sae_sweep", "-m", *QUIET, f"hydra.sweep.dir={sweep_dir}", *args],
                             cwd=sweep_dir.parent, env=cli_env(), capture_output=True, text=True, timeout=240))


def activations(path: Path, seed: int) -> Path:
    rows = np.random.default_rng(seed).standard_normal((3000, 16)).astype(np.float32)
    np.save(path, rows)
    return path


def records(sweep_dir: Path) -> dict[str, tuple[dict, int]]:
    """Run dir -> (summary.json, its mtime) for every run dir with a summary."""
    return {p.parent.name: (json.loads(p.read_text()), p.stat().st_mtime_ns) for p in sweep_dir.glob("*/summary.json")}


def toy(experiment: str) -> list[str]:
    # TINY pins every field the two recipes set except quickstart's sae.l1_norm, and no sweeper params.
    return [a for a in TINY if not a.startswith("experiment=")] + [f"experiment={experiment}", "hydra.sweeper.params=null"]


@pytest.mark.parametrize("differ", ["data.path", "experiment"])
def test_grid__two_sweeps_of_one_name_differing_only_outside_the_dir_name_both_keep_their_results(
        tmp_path: Path, differ: str) -> None:
    out = tmp_path / "outputs" / "same"
    if differ == "data.path":
        runs = [["data=activations", f"data.path={activations(tmp_path / f'{i}.npy', i)}", "data.eval_size=500",
                 "dict_size=16", "alpha=0.3", "train.num_samples=5000", "train.eval_every=2500",
                 "train.batch_size=128"] for i in (0, 1)]
    else:
        runs = [[*toy("smoke"), "alpha=0.3"], [*toy("quickstart"), "alpha=0.3"]]
    sweep(out, *runs[0])
    (first, (summary, mtime)), = records(out).items()

    proc = sweep(out, *runs[1])
    assert "holds another cell's record" in proc.stdout + proc.stderr
    found = records(out)
    assert found[first] == (summary, mtime)  # the first sweep's result, untouched
    (second,) = set(found) - {first}
    assert second.startswith(first + "~") and found[second][0]["status"] == "completed"
    df = table(out)
    assert sorted(df["run"]) == sorted([first, second]) and set(df["status"]) == {"completed"}
    assert df["cell_key"].nunique() == 2

    sweep(out, *runs[1])  # resume: each sweep finds its own cell, whichever dir holds it
    assert records(out) == found


def test_optuna__a_study_made_anew_in_a_sweep_dir_does_not_overwrite_the_old_trials(tmp_path: Path) -> None:
    out = tmp_path / "optuna"
    args = ("hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=1", "alpha=interval(0.1,0.3)")
    ok(run_sweep(out, *args))
    old = records(out)
    (out / "optuna.db").unlink()  # a new study of the same name: its trial 0 is named like the old one

    ok(run_sweep(out, *args))
    found = records(out)
    assert {k: v for k, v in found.items() if k in old} == old
    (new,) = set(found) - set(old)
    assert new.startswith("trial_00000~") and found[new][0]["status"] == "completed"
    assert len(table(out)) == 2
