"""The thread policy (sae_sweep/threads.py) in real runs: the CLI and joblib workers get it."""

from __future__ import annotations

import json

from sae_sweep.threads import (
    POLICY_ENV,
    usable_cores,
)
from tests.helpers.cli import REPO, SMOKE, run_cli
from tests.helpers.sweep import ok, run_sweep


def test_cli__a_small_run_gets_one_thread_and_the_users_wait_policy_is_kept_and_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(POLICY_ENV, raising=False)
    res = run_cli(*SMOKE, f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["omp_wait_policy"] is None and summary["threads"] == 1  # a small step: one thread
    res = run_cli(*SMOKE, f"hydra.run.dir={tmp_path}/active", cwd=REPO, env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "active" / "summary.json").read_text())["omp_wait_policy"] == "ACTIVE"


def test_cli__a_large_step_keeps_the_process_thread_count_and_an_explicit_count_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    large = ("data.n=256", "dict_size=1024", "train.num_samples=2560", "train.eval_every=2560", "data.eval_size=256")
    for name, env in (("large", {}), ("off", {POLICY_ENV: "off"})):  # off: the process's own thread count
        res = run_cli(*SMOKE, *large, f"hydra.run.dir={tmp_path}/{name}", cwd=REPO, env=env)
        assert res.returncode == 0, res.stderr
    threads = {name: json.loads((tmp_path / name / "summary.json").read_text())["threads"] for name in ("large", "off")}
    assert threads["large"] == threads["off"], threads
    small = run_cli(*SMOKE, f"hydra.run.dir={tmp_path}/small", cwd=REPO)
    assert small.returncode == 0, small.stderr
    assert json.loads((tmp_path / "small" / "summary.json").read_text())["threads"] == 1
    res = run_cli(*SMOKE, "train.threads=2", f"hydra.run.dir={tmp_path}/two", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["threads"] == 2


def test_multirun__joblib_workers_take_one_thread_each_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(POLICY_ENV, raising=False)
    # As many workers as usable cores (at least 2): one thread each.
    n_jobs = max(2, usable_cores())
    ok(run_sweep(tmp_path / "sweep", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", "train.threads=0",
                 "alpha=0.1,0.3"))
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(summaries) == 2
    assert all(s["threads"] == 1 for s in summaries), summaries
