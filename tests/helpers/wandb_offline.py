"""Reading an offline W&B run back from disk, for tests: history rows, summary, config, exit code.

The records come from ``sae_sweep.sinks.read_wandb_records`` (the product needs that much to tell a
finished run from a killed one); what each record means for a test is read here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from sae_sweep.record import METRICS_FILE
from sae_sweep.sinks import read_wandb_records


def read_wandb_offline_run(run_dir: Path, wait_s: float = 30.0) -> dict[str, Any]:
    """The history rows, summary, config and exit code of the single offline W&B run under run_dir.

    wandb-core writes the file from its own process and may still be flushing when ``finish()``
    has returned, so this waits (up to ``wait_s``) until the run's exit record is on disk.
    """
    deadline = time.monotonic() + wait_s
    while True:
        files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
        if len(files) > 1:
            raise FileNotFoundError(f"expected one offline W&B run under {run_dir}/wandb, found {len(files)}")
        if files:
            out = _parse_run_file(files[0])
            if out["exit_code"] is not None or time.monotonic() > deadline:
                return out
        elif time.monotonic() > deadline:
            raise FileNotFoundError(f"no offline W&B run under {run_dir}/wandb")
        time.sleep(0.2)


def _parse_run_file(path: Path) -> dict[str, Any]:
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    out: dict[str, Any] = {"exit_code": None, "name": None, "group": None, "id": None, "tags": []}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for rec in read_wandb_records(path):
        which = rec.WhichOneof("record_type")
        if which == "history":
            history.append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif which == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif which == "config":
            config.update({key(i): json.loads(i.value_json) for i in rec.config.update})
        elif which == "run":
            out["name"], out["group"], out["id"] = rec.run.display_name, rec.run.run_group, rec.run.run_id
            out["tags"] = list(rec.run.tags)
            config.update({key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif which == "exit":
            out["exit_code"] = rec.exit.exit_code
    return {**out, "history": history, "summary": summary, "config": config}


def as_metrics_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """W&B history rows as metrics.jsonl spells them: ``step`` first, NaN as null, infinities as strings."""
    def plain(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return v

    return [{"step": r["_step"], **{k: plain(v) for k, v in r.items() if not k.startswith("_")}} for r in history]


def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
