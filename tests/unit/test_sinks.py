"""W&B details read back from the offline files with the real client: the analysis run and the mirror
of a run dir mended after it was lost.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

import matplotlib

matplotlib.use("Agg")

from sae_sweep.run import run  # noqa: E402
from sae_sweep.sinks import analysis_run_id, log_report_run, repair_wandb_mirror  # noqa: E402
from tests.helpers.build import build_cfg  # noqa: E402
from tests.helpers.figure import figure  # noqa: E402
from tests.helpers.wandb_offline import (
    as_metrics_rows,
    metrics_rows,
    read_wandb_offline_run,  # noqa: E402
)

WALL_CLOCK = ("_runtime", "_timestamp", "_wandb/runtime")  # W&B's own timings: the rewrite's, not the run's


def test_log_report_run__a_second_analysis_of_a_sweep_resumes_its_one_run(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    image = figure(tmp_path / "fig.png")
    for value in (48, 64):
        log_report_run(run_dir=sweep, mode="offline", project="p", name="sweep/analysis", group="sweep",
                       images={"all/fig": image}, summary={"all/consensus": value})
    assert len(list(sweep.glob("wandb/offline-run-*"))) == 1  # the superseded local copy is gone
    wb = read_wandb_offline_run(sweep)
    assert wb["id"] == analysis_run_id(sweep) and wb["exit_code"] == 0
    assert wb["summary"]["all/consensus"] == 64


def _without(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def test_repair_wandb_mirror__a_lost_mirror_is_written_again_as_the_run_wrote_it(tmp_path):
    summary = run(build_cfg(wandb_mode="offline"), tmp_path, run_name="alpha=0.3", group="g1", trial=7)
    before = read_wandb_offline_run(tmp_path)
    assert not repair_wandb_mirror(tmp_path)  # a whole mirror is left alone
    assert read_wandb_offline_run(tmp_path)["history"] == before["history"]

    shutil.rmtree(tmp_path / "wandb")
    assert repair_wandb_mirror(tmp_path)
    after = read_wandb_offline_run(tmp_path)
    for key in ("id", "name", "group", "tags", "exit_code", "config"):
        assert after[key] == before[key], key
    assert after["id"] == summary["wandb_run_id"] and after["exit_code"] == 0
    assert [_without(r, WALL_CLOCK) for r in after["history"]] == [_without(r, WALL_CLOCK) for r in before["history"]]
    assert as_metrics_rows(after["history"]) == metrics_rows(tmp_path)
    assert math.isnan(after["history"][0]["loss_change"])  # metrics.jsonl's null is logged as the NaN it was
    assert _without(after["summary"], WALL_CLOCK) == _without(before["summary"], WALL_CLOCK)
    assert not repair_wandb_mirror(tmp_path)
