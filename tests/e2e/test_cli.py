"""`python -m sae_sweep` as a user runs it: a subprocess on the real config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import REPO, SMOKE, run_cli


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("**/config.yaml"))


def test_cli__smoke_run_prints_summary_and_writes_run_dir(tmp_path):
    res = run_cli(*SMOKE, f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "MMCS true->learned" in res.stdout and "completed" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dict_size"] == 128 and summary["h"] == 64


def test_cli__top_level_alpha_and_dict_size_overrides(tmp_path):
    res = run_cli(*SMOKE, "alpha=0.05", "dict_size=96", f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["alpha"] == 0.05 and summary["dict_size"] == 96


def test_cli__cfg_job_shows_the_resolved_config():
    res = run_cli("--cfg", "job", "--resolve", "alpha=0.2", "experiment=sharkey2022", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "alpha: 0.2" in res.stdout and "num_samples: 15000000" in res.stdout and "h: 512" in res.stdout


@pytest.mark.parametrize(
    "override, field",
    [
        ("alpha=-0.1", "alpha"),
        ("dict_size=0", "dict_size"),
        ("dict_size=abc", "dict_size"),
        ("data.mean_active=100", "data.mean_active"),  # smoke has h=64
        ("data.decay_rate=1.5", "data.decay_rate"),
        ("data.decay=linear", "data.decay"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.sparse_below=1.5", "train.sparse_below"),
        ("data.correlation=2", "data.correlation"),
        ("logger.wandb.mode=sometimes", "logger.wandb.mode"),
        ("not_a_field=1", "not_a_field"),
        ("data=imagenet", "data"),
    ],
)
def test_cli__bad_input_stops_with_one_line_naming_the_field(tmp_path, override, field):
    res = run_cli(*SMOKE, override, f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("sae_sweep: error:") and field in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("**/metrics.jsonl")), "training must not start"


def test_cli__diverging_run_exits_nonzero_and_is_recorded(tmp_path):
    res = run_cli(*SMOKE, "train.lr=1e30", f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 3, res.stderr
    assert "diverged" in res.stderr and "Traceback" not in res.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_cli__conflicting_hydra_flags_are_a_one_line_error():
    res = run_cli("-m", "alpha=0.1", "--cfg", "hydra", cwd=REPO)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("sae_sweep: error: Only one of") and len(res.stderr.strip().splitlines()) == 1


def test_cli__help_lists_recipes_groups_fields_and_examples_without_internal_names():
    res = run_cli("--help", cwd=REPO)
    assert res.returncode == 0, res.stderr
    page = res.stdout
    assert "_schema" not in page and "cache:" not in page and "cache=" not in page
    recipes = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    for name in recipes:
        if not name.startswith("gen_"):
            assert f"  {name} " in page, name
    assert "gen_a..gen_h" in page
    for group in ("data", "sae", "train", "logger"):  # every option of every user-facing group
        line = next(x for x in page.splitlines() if x.startswith(f"  {group} "))
        for option in (p.stem for p in (REPO / "conf" / group).glob("*.yaml")):
            assert option in line, (group, option)
    for launcher in ("basic", "joblib", "packed", *(p.stem for p in (REPO / "conf/hydra/launcher").glob("*.yaml"))):
        assert launcher in page, launcher
    for field in ("alpha", "dict_size", "seed", "name"):
        assert f"  {field} " in page, field
    for command in ("python -m sae_sweep experiment=smoke", "python -m sae_sweep -m alpha=",
                    "hydra/sweeper=sae_optuna", "hydra/launcher=packed", "experiment=quickstart",
                    "python -m sae_sweep.analyze", "python -m sae_sweep.refine", "python -m sae_sweep.cache",
                    "python -m sae_sweep.export", "python -m sae_sweep.upload"):
        assert command in page, command
