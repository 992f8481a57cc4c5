"""`python -m sae_sweep.upload DIR`: upload every offline W&B run under a sweep (or run) dir.

    python -m sae_sweep.upload outputs/quickstart              # every run's and the analysis's W&B run
    python -m sae_sweep.upload outputs/quickstart --dry-run    # list what would be uploaded
    python -m sae_sweep.upload outputs/quickstart -- -p myproj # more flags for `wandb sync`

``wandb sync DIR`` does not look into subfolders, so a sweep dir alone syncs nothing: each run keeps its
W&B run in ``<run dir>/wandb/offline-run-*`` and the analysis in ``<sweep dir>/wandb/``. This finds them
all and hands them to one ``wandb sync`` (the same as ``wandb sync $(find DIR -type d -name 'offline-run-*')``);
runs already synced are skipped by wandb itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def offline_runs(root: Path) -> list[Path]:
    """Every offline W&B run dir under ``root``, in path order."""
    return sorted(p for p in Path(root).glob("**/wandb/offline-run-*") if p.is_dir())


def sync_command(runs: list[Path], dry_run: bool = False, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "wandb", "sync", *(["--dry-run"] if dry_run else []), *(extra or []),
            *map(str, runs)]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m sae_sweep.upload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="a sweep dir (e.g. outputs/quickstart) or a run dir")
    p.add_argument("--dry-run", action="store_true", help="list the runs wandb would upload, upload nothing")
    args = p.parse_args(argv)
    runs = offline_runs(args.dir)
    if not runs:
        p.exit(1, f"sae_sweep.upload: no offline W&B runs under {args.dir}\n")
    print(f"{len(runs)} offline W&B runs under {args.dir}", flush=True)
    sys.exit(subprocess.call(sync_command(runs, args.dry_run, extra)))


if __name__ == "__main__":
    main()
