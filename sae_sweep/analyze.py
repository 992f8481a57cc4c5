"""`python -m sae_sweep.analyze SWEEP_DIR`: estimate h from a finished sweep, draw the figures, write report.md.

Runs on any sweep dir (a grid or an Optuna study, finished or stopped early); every multirun also
does it by itself at its end. Thresholds are flags; see sae_sweep/analysis/estimate.py for what each
estimator computes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas and matplotlib load only when an analysis runs
    import pandas as pd

    from sae_sweep.analysis.report import AnalysisSettings, GroupReport


def _parser() -> argparse.ArgumentParser:
    from sae_sweep.analysis.report import AnalysisSettings

    p = argparse.ArgumentParser(prog="python -m sae_sweep.analyze", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path, help="a sweep dir, e.g. outputs/quickstart")
    for f in dataclasses.fields(AnalysisSettings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=f.default,
                       help=f"default {f.default}; see AnalysisSettings in sae_sweep/analysis/report.py")
    p.add_argument("--wandb", choices=("offline", "online", "disabled"),
                   default=os.environ.get("WANDB_MODE", "offline"),
                   help="log the figures and estimates as one W&B run in the sweep dir (default: $WANDB_MODE or offline)")
    p.add_argument("--project", default="sae_sweep", help="W&B project")
    return p


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
    print(f"report: {Path(sweep_dir) / 'report.md'}")
    return reports


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from sae_sweep.analysis.report import AnalysisSettings

    settings = AnalysisSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisSettings)})
    if not args.sweep_dir.is_dir():
        sys.exit(f"sae_sweep.analyze: error: {args.sweep_dir} is not a directory")
    try:
        run_analysis(args.sweep_dir, settings, wandb_mode=args.wandb, project=args.project)
    except ValueError as exc:
        sys.exit(f"sae_sweep.analyze: error: {exc}")


if __name__ == "__main__":
    main()
