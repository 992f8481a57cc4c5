"""scripts/cache_activations.py, the entry design.md names, runs sae_sweep.cache's main as it is."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.cli import REPO

SCRIPT = REPO / "scripts" / "cache_activations.py"


def _run(args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cache_script__help_is_the_cache_modules(tmp_path):
    r = _run(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout and "--layer" in r.stdout


def test_cache_script__bad_argument_is_one_line_exit_2_nothing_written(tmp_path):
    out = tmp_path / "acts.npy"
    r = _run(["--out", str(out), "--layer", "-1"], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer" in lines[0] and "-1" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cache_script__unknown_site_lists_the_sites_in_one_line_nothing_written(tmp_path):
    r = _run(["--out", str(tmp_path / "acts.npy"), "--site", "foo"], tmp_path)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.strip() == "error: cache.site must be one of residual, head, heads, mlp, got 'foo'"
    r = _run(["--out", str(tmp_path / "acts.npy"), "--site", "heads", "--head", "2"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cache.head must be unset with site=heads" in r.stderr
    assert list(tmp_path.iterdir()) == []
