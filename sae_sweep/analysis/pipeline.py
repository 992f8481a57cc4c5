"""The whole analysis of a sweep dir: report.md and figures (report.py), the W&B summary run, the table printed.

What ``python -m sae_sweep.analyze`` runs and what every multirun runs at its end (sweep/callbacks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sae_sweep.record import REPORT_FILE

if TYPE_CHECKING:  # pandas and matplotlib load only when an analysis runs
    import pandas as pd

    from sae_sweep.analysis.report import GroupReport
    from sae_sweep.analysis.settings import AnalysisSettings


def run_analysis(sweep_dir: Path, settings: AnalysisSettings | None = None, *, wandb_mode: str = "offline",
                 project: str = "sae_sweep", group: str | None = None,
                 cells: pd.DataFrame | None = None) -> list[GroupReport]:
    """analyze() plus the W&B summary run; returns the group reports."""
    from sae_sweep.analysis.report import analyze, estimates_table

    reports = analyze(sweep_dir, settings, cells)
    if wandb_mode != "disabled":
        from sae_sweep.analysis.sweep_data import group_slug
        from sae_sweep.sinks import log_report_run

        images = {f"{group_slug(r.label)}/{k}": p for r in reports for k, p in r.figures.items()}
        summary = {f"{group_slug(r.label)}/{e.signal}": e.value for r in reports for e in r.estimates}
        summary.update({f"{group_slug(r.label)}/true_h": r.true_h for r in reports})
        summary.update({f"{group_slug(r.label)}/consensus": r.consensus() for r in reports})
        log_report_run(run_dir=Path(sweep_dir), mode=wandb_mode, project=project, name=f"{Path(sweep_dir).name}/analysis",
                       group=group or Path(sweep_dir).name, images=images, summary=summary)
    print(estimates_table(reports))
    print(f"report: {Path(sweep_dir) / REPORT_FILE}")
    return reports
