"""`python -m sae_sweep.refine SWEEP_DIR`: refine a finished grid around its estimates of h.

Adds J between the grid points that bracket each signal's estimate (and one alpha beyond the grid
when the best alpha sits on its edge), runs the new cells through the CLI into the same sweep dir,
and lets the multirun's own analysis re-estimate. Arguments after ``--`` are passed on to every
multirun (e.g. ``-- hydra/launcher=packed``). The rule and the record (refinement.json) are in
sae_sweep/sweep/refine.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other bad input
        print(f"sae_sweep.refine: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    from sae_sweep.sweep.refine import MAX_ROUNDS

    p = _Parser(prog="python -m sae_sweep.refine", description=__doc__.splitlines()[0],
                epilog="python -m sae_sweep.refine outputs/quickstart --rounds 2 -- hydra/launcher=packed")
    p.add_argument("sweep_dir", type=Path, help="a grid sweep dir with estimates.json, e.g. outputs/quickstart")
    p.add_argument("--rounds", type=int, default=1,
                   help=f"refine until this many rounds are recorded in refinement.json (1..{MAX_ROUNDS}; "
                        f"default 1); stops early when nothing new is proposed")
    p.add_argument("--dry-run", action="store_true", help="print the next round's commands; run and write nothing")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    from sae_sweep.sweep.refine import RefineError, refine

    try:
        code = refine(args.sweep_dir, rounds=args.rounds, extra_args=extra, dry_run=args.dry_run)
    except RefineError as exc:
        print(f"sae_sweep.refine: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code)


if __name__ == "__main__":
    main()
