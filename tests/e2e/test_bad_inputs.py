"""Every bad input is one line naming the field, exit 2, before any allocation or training, and leaves
nothing under outputs/: single runs, grids and Optuna studies, through the real CLI in a subprocess
whose working directory is a fresh tmp dir (so anything written would land in it)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.cli import SMOKE, run_cli

OPTUNA = ["-m", "hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=2", "alpha=interval(0.1,1)"]

CASES = {
    # sizes the machine cannot hold (sae_sweep/checks.py): no allocation is tried
    "huge dict_size": (["dict_size=100000000000"], "dict_size must be at most"),
    "huge data.n": (["data.n=100000000"], "data.n must be at most"),
    "huge data.h": (["data.h=1000000000", "data.mean_active=3"], "data.h must be at most"),
    "huge eval_size": (["data.eval_size=1000000000000"], "data.eval_size must be at most"),
    "cuda without CUDA": (["train.device=cuda"], "train.device must be cpu or auto"),
    "seed past int64": (["seed=9223372036854775808"], "seed must be an integer in [0, 9223372036854775807]"),
    "23-digit seed": (["seed=12345678901234567890123"], "seed must be an integer in [0,"),
    "data seed past int64": (["data.seed=9223372036854775808"], "data.seed must be an integer in [0,"),
    "negative checkpoint_every": (["train.checkpoint_every=-1"],
                                  "train.checkpoint_every must be an integer >= 0 (samples; 0 = no checkpoints), got -1"),
    "nonsense checkpoint_every": (["train.checkpoint_every=often"], "train.checkpoint_every"),
    "unknown recipe": (["experiment=smok"], "Could not find 'experiment/smok'"),
    "unknown nested key": (["+train.lrr=0.1"], "train.lrr is not a config field"),
    "unknown top-level key": (["+foo=1"], "foo is not a config field"),
    # grids: every cell is checked before the first runs
    "grid with a bad cell": (["-m", "dict_size=16,0"], "dict_size must be a positive integer"),
    "grid with a huge cell": (["-m", "dict_size=16,100000000000"], "dict_size must be at most"),
    "grid with an unknown key": (["-m", "+foo=1", "dict_size=16,32"], "foo is not a config field"),
    # Optuna: search space, sampler, objectives and both ends of every axis, before any trial
    "inverted interval": (["-m", "hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=2", "alpha=interval(1,0)"],
                          "alpha: search space 'interval(1,0)' must be a valid range"),
    "log interval from 0": (["-m", "hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=2",
                             "alpha=tag(log,interval(0,1))"], "must be a valid range"),
    "unknown sampler kwarg": ([*OPTUNA, "hydra.sweeper.sampler=random", "+hydra.sweeper.sampler_kwargs={foo:1}"],
                              "hydra.sweeper.sampler_kwargs must be keyword arguments the random sampler takes"),
    "unknown pruner kwarg": ([*OPTUNA, "hydra.sweeper.pruner=median", "+hydra.sweeper.pruner_kwargs={foo:1}"],
                             "hydra.sweeper.pruner_kwargs must be keyword arguments the median pruner takes"),
    "unknown objective": ([*OPTUNA, "hydra.sweeper.objectives=[nosuchmetric]"],
                          "hydra.sweeper.objectives must name metrics of summary.json"),
    "axis bound too big": (["-m", "hydra/sweeper=sae_optuna", "hydra.sweeper.n_trials=2",
                            "dict_size=int(interval(16,100000000000))"], "dict_size must be at most"),
    "unknown key in a study": ([*OPTUNA, "+foo=1"], "foo is not a config field"),
}


def _assert_rejected(res, tmp_path, expected: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("sae_sweep: error:") and expected in lines[0], lines[0]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npy"]
    assert not written and not (tmp_path / "outputs").exists(), written


@pytest.mark.parametrize("case", list(CASES))
def test_cli__bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    overrides, expected = CASES[case]
    flags = [o for o in overrides if o == "-m"]  # Hydra's flags go before the overrides
    res = run_cli(*flags, *SMOKE, *(o for o in overrides if o != "-m"), "logger.wandb.mode=disabled",
                  cwd=tmp_path, timeout=120)
    _assert_rejected(res, tmp_path, expected)


def _activation_file(tmp_path, kind: str):
    path = tmp_path / f"{kind}.npy"
    rows = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)
    if kind == "text":
        path.write_text("not an array\n")
    elif kind == "empty":
        np.save(path, rows[:0])
    else:
        rows[321, 5] = {"nan": np.nan, "inf": np.inf}[kind]
        np.save(path, rows)
    return path


@pytest.mark.parametrize("kind, center, expected", [
    ("nan", "true", "must hold finite numbers only, got nan at row 321, column 5"),
    ("nan", "false", "must hold finite numbers only, got nan at row 321, column 5"),  # not centred: still caught
    ("inf", "true", "must hold finite numbers only, got inf at row 321, column 5"),
    ("text", "true", "no .npy header"),  # not mistaken for pickled data
    ("empty", "true", "has 0 rows; it needs at least 2"),
])
def test_cli__bad_activation_file_is_one_line_exit_2_and_writes_nothing(tmp_path, kind, center, expected):
    path = _activation_file(tmp_path, kind)
    res = run_cli("data=activations", f"data.path={path}", f"data.center={center}", "data.eval_size=100",
                  "dict_size=16", "train.num_samples=2048", "train.progress=false", "logger.wandb.mode=disabled",
                  cwd=tmp_path, timeout=120)
    _assert_rejected(res, tmp_path, f"data.path: {path} " if kind != "text" else expected)
    assert expected in res.stderr
