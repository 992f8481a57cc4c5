"""Toy generator throughput: ToyFeatures(ToyDataConfig(correlation=rho)).sample(B, g), n=256, h=512.

    .venv/bin/python benchmarks/bench_toy.py
    .venv/bin/python benchmarks/bench_toy.py --batch-sizes 256 4096 8192 --correlations 0 0.5 1

Cases alternate round by round; samples/s is the median over rounds. Target: >= 200K samples/s
with correlation on (h=512, n=256). bench_train_step.py prints the same table next to the
training step's samples/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import environment, interleaved  # noqa: E402

from sae_sweep.config import ToyDataConfig  # noqa: E402
from sae_sweep.data.toy import ToyFeatures  # noqa: E402

TARGET = 200_000


def bench_toy(batch_sizes: list[int], correlations: list[float], rounds: int, min_time: float,
              n: int = 256, h: int = 512) -> list[dict]:
    cases = {}
    for rho in correlations:
        toy = ToyFeatures(ToyDataConfig(n=n, h=h, correlation=rho))
        for b in batch_sizes:
            g = torch.Generator().manual_seed(1)
            cases[(rho, b)] = (lambda toy=toy, b=b, g=g: toy.sample(b, g))
    times = interleaved({f"{k}": fn for k, fn in cases.items()}, rounds, min_time)
    rows = []
    for (rho, b), t in zip(cases, times.values(), strict=True):
        rows.append({"correlation": rho, "B": b, "samples_s": b / statistics.median(t),
                     "min_s": b / max(t), "max_s": b / min(t)})
    return rows


def print_toy_table(rows: list[dict], step_rate: dict[int, float] | None = None) -> None:
    print(f"\ntoy generator, n=256, h=512 (samples/s, median over rounds [slowest, fastest]; target >= "
          f"{TARGET:,} with correlation > 0)")
    print(f"{'corr':>5} {'B':>6} {'samples/s':>11}  {'range':>21}")
    for r in rows:
        mark = ""
        if r["correlation"] > 0:
            mark = "  ok" if r["samples_s"] >= TARGET else "  BELOW TARGET"
        print(f"{r['correlation']:>5.2f} {r['B']:>6} {r['samples_s']:>11,.0f}  "
              f"[{r['min_s']:>9,.0f}, {r['max_s']:>9,.0f}]{mark}")
    if step_rate:
        print("training step (B=4096, K=1) for comparison: "
              + ", ".join(f"J={j}: {s:,.0f} samples/s" for j, s in step_rate.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--correlations", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(environment())
    print_toy_table(bench_toy(args.batch_sizes, args.correlations, args.rounds, args.min_time))
    print(f"\nend: {environment()}")


if __name__ == "__main__":
    main()
