"""Damaged records through the CLI: resume trains only what is broken, the table marks it, the analysis
skips it with one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sae_sweep.table import collect_runs
from tests.helpers.sweep import cli_env, ok, run_sweep, table


def _scribble(path: Path, at: float = 0.6, count: int = 64) -> None:
    """Overwrite ``count`` bytes at a relative position with other bytes (the file keeps its size)."""
    data = bytearray(path.read_bytes())
    pos = int(len(data) * at)
    data[pos : pos + count] = bytes((b + 1) % 256 for b in data[pos : pos + count])
    path.write_bytes(bytes(data))


def test_grid__resume_retrains_only_the_damaged_cell_and_analysis_skips_a_damaged_one(tmp_path):
    sweep = tmp_path / "grid"
    args = ("dict_size=16,32", "seed=0,1", "train.save_weights=true")
    ok(run_sweep(sweep, *args))
    df = table(sweep)
    assert len(df) == 4 and set(df["status"]) == {"completed"}
    runs = [sweep / r for r in df["run"]]
    mtimes = {r: (r / "summary.json").stat().st_mtime_ns for r in runs}
    _scribble(runs[0] / "sae.safetensors")
    (runs[1] / ".hydra" / "config.yaml").write_text(":\n  - [unbalanced")  # garbage YAML
    damaged = collect_runs(sweep)
    assert damaged.set_index("run").loc[runs[0].name, "status"] == "corrupt"

    again = ok(run_sweep(sweep, *args))
    log = again.stderr + again.stdout
    assert f"{runs[0] / 'sae.safetensors'}: changed or damaged" in log and "the cell runs again" in log
    assert "resume: 3 of 4 cells already finished" in log
    after = {r: (r / "summary.json").stat().st_mtime_ns for r in runs}
    assert after[runs[0]] != mtimes[runs[0]] and all(after[r] == mtimes[r] for r in runs[1:])
    assert set(table(sweep)["status"]) == {"completed"}

    _scribble(runs[2] / "latents.safetensors", at=0.95, count=2)
    res = subprocess.run([sys.executable, "-m", "sae_sweep.analyze", str(sweep), "--wandb", "disabled"],
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    skipped = [line for line in res.stderr.splitlines() if line.startswith("analysis: skipped")]
    assert len(skipped) == 1 and f"{runs[2] / 'latents.safetensors'}: changed or damaged" in skipped[0]
