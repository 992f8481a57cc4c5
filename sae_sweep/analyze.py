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

from sae_sweep.analysis.pipeline import run_analysis  # the analysis itself (pandas and matplotlib load there)

__all__ = ["main", "run_analysis"]


def _parser() -> argparse.ArgumentParser:
    from sae_sweep.analysis.settings import AnalysisSettings

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


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from sae_sweep.analysis.settings import AnalysisSettings

    settings = AnalysisSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisSettings)})
    if not args.sweep_dir.is_dir():
        sys.exit(f"sae_sweep.analyze: error: {args.sweep_dir} is not a directory")
    try:
        run_analysis(args.sweep_dir, settings, wandb_mode=args.wandb, project=args.project)
    except ValueError as exc:
        sys.exit(f"sae_sweep.analyze: error: {exc}")


if __name__ == "__main__":
    main()
