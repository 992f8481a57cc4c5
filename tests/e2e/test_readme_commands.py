"""The README's commands still work: every `.venv/bin/python -m sae_sweep...` line of its code blocks.

`python -m sae_sweep` lines compose (Hydra's `--cfg job` on the same overrides, `-m` dropped and each
swept value cut to its first, since `--cfg` and `-m` exclude each other); the smoke recipe really
runs, shrunk, in a temp dir; the other CLIs' lines must use only options their `--help` lists.
A failure names the README line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache

import pytest

from tests.helpers.cli import REPO, SMOKE, run_cli

PREFIX = ".venv/bin/python -m "


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) of every `.venv/bin/python -m sae_sweep...` line inside a code block."""
    found, in_block = [], False
    for i, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and PREFIX + "sae_sweep" in line:
            found.append((i, line[line.index(PREFIX) + len(PREFIX):]))
    return found


COMMANDS = readme_commands()


def _composable(args: list[str]) -> list[str]:
    """The overrides of a (multi)run command as one job's: no -m, a swept value cut to its first."""
    out = []
    for a in args:
        if a in ("-m", "--multirun"):
            continue
        key, eq, value = a.partition("=")
        if eq and "," in value and not value.startswith(("[", "{", "'", '"')) and "(" not in value:
            a = f"{key}={value.split(',')[0]}"
        out.append(a)
    return out


def test_readme__has_commands_of_every_cli():
    modules = {shlex.split(cmd)[0] for _, cmd in COMMANDS}
    assert {"sae_sweep", "sae_sweep.analyze", "sae_sweep.refine", "sae_sweep.cache"} <= modules, modules


@pytest.mark.parametrize(("lineno", "cmd"), COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_command__composes_or_parses(lineno, cmd, tmp_path):
    module, *args = shlex.split(cmd, comments=True)
    where = f"README.md:{lineno}: {cmd}"
    if module == "sae_sweep":
        if "--help" not in args and "--cfg" not in args:
            args = [*_composable(args), "--cfg", "job"]
        res = run_cli(*args, cwd=tmp_path, timeout=120)
        assert res.returncode == 0, f"{where}\n{res.stderr[-2000:]}"
        assert "--help" in args or "alpha:" in res.stdout, f"{where}\n{res.stdout[-2000:]}"
        assert not any(tmp_path.iterdir()), f"{where}: composing wrote {sorted(tmp_path.iterdir())}"
        return
    rc, page = _help(module)
    assert rc == 0, f"{where}\n{page[-2000:]}"
    for flag in (a for a in args if re.fullmatch(r"--[a-z][a-z0-9-]*", a)):
        assert flag in page, f"{where}: {flag} is not an option of {module} any more"


@cache
def _help(module: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `python -m MODULE --help`, once per module."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr


def test_readme_smoke_command__really_runs(tmp_path):
    (lineno, cmd), = [(n, c) for n, c in COMMANDS if "experiment=smoke" in c]
    args = shlex.split(cmd, comments=True)[1:]
    res = run_cli(*args, *SMOKE[1:], f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert res.returncode == 0, f"README.md:{lineno}: {cmd}\n{res.stderr[-2000:]}"
    assert (tmp_path / "run" / "summary.json").is_file() and "completed" in res.stdout
