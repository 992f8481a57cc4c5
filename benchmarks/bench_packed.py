"""Packed grids: a toy (alpha, J) grid trained as packs vs the same grid job by job.

    .venv/bin/python benchmarks/bench_packed.py                       # (a) + (c), ~25 min on 2 cores
    .venv/bin/python benchmarks/bench_packed.py --samples 200000      # a quicker (a)
    .venv/bin/python benchmarks/bench_packed.py --skip-grid           # (c) only

(a) The grid of the issue: 8 alphas x J in {512, 1024, 2048}, n=256, h=512, ``--samples`` per run,
    through the real CLI in a subprocess each: ``python -m sae_sweep -m alpha=... dict_size=...``
    with Hydra's in-process basic launcher (job by job) and with ``hydra/launcher=packed``. Both
    write the same records (W&B offline unless ``--wandb disabled``); the ratio is job-by-job wall
    time / packed wall time, the baseline measured in the same run. Target: >= 1.8.
(c) Growth: wall time of one pack (``run_packed`` in process, W&B off) of K members at J=1024
    (K = 1, 2, 4, 8), with lanes (one member group per core) and without (members in turn, all
    threads), and of one run at each J; "K solo / pack" = K times the one-member time over the
    pack's time, i.e. what packing saves against running the same K runs one after another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import environment  # noqa: E402

from sae_sweep.config import LoggerConfig, RunConfig, ToyDataConfig, TrainConfig, WandbConfig  # noqa: E402
from sae_sweep.run import Job, run_packed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.8
ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def grid_cmd(sweep_dir: Path, samples: int, dict_sizes: list[int], wandb: str, packed: bool) -> list[str]:
    return [sys.executable, "-m", "sae_sweep", "-m", f"alpha={','.join(map(str, ALPHAS))}",
            f"dict_size={','.join(map(str, dict_sizes))}", "data.n=256", "data.h=512",
            f"train.num_samples={samples}", f"train.eval_every={samples}", "train.progress=false",
            f"logger.wandb.mode={wandb}", "hydra.callbacks.report.enabled=false", "name=bench_packed",
            f"hydra.sweep.dir={sweep_dir}", *(["hydra/launcher=packed"] if packed else [])]


def bench_grid(samples: int, dict_sizes: list[int], wandb: str) -> dict[str, float]:
    env = {**os.environ, "WANDB_SILENT": "true"}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, packed in (("job by job (basic launcher)", False), ("packed launcher", True)):
            t0 = time.perf_counter()
            proc = subprocess.run(grid_cmd(Path(tmp) / name.split()[0], samples, dict_sizes, wandb, packed),
                                  cwd=tmp, env=env, capture_output=True, text=True)
            out[name] = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{name} sweep failed:\n{proc.stderr[-3000:]}")
            print(f"  {name}: {out[name]:.1f} s", flush=True)
    return out


def run_cfg(alpha: float, dict_size: int, samples: int, batch_size: int, lanes: int) -> RunConfig:
    return RunConfig(data=ToyDataConfig(n=256, h=512, eval_size=2048),
                     train=TrainConfig(batch_size=batch_size, num_samples=samples, eval_every=samples,
                                       progress=False, save_weights=False, lanes=lanes),
                     logger=LoggerConfig(wandb=WandbConfig(mode="disabled")),
                     alpha=alpha, dict_size=dict_size, seed=0, name="bench")


def pack_time(dict_sizes: list[int], k: int, samples: int, batch_size: int, lanes: int) -> float:
    """Wall seconds of run_packed for k members at each of ``dict_sizes`` (alphas spread over a decade)."""
    cfgs = [run_cfg(ALPHAS[i % len(ALPHAS)], j, samples, batch_size, lanes) for j in dict_sizes for i in range(k)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_packed([Job(c, Path(tmp) / str(i)) for i, c in enumerate(cfgs)])
        return time.perf_counter() - t0


def bench_growth(members: list[int], dict_sizes: list[int], samples: int, rounds: int, batch_size: int) -> None:
    cases = [(1024, k, lanes) for k in members for lanes in (0, 1)] + [(j, 1, 0) for j in dict_sizes if j != 1024]
    times: dict[tuple[int, int, int], list[float]] = {c: [] for c in cases}
    for _ in range(rounds):  # interleaved: a slow phase of the machine hits every case alike
        for j, k, lanes in cases:
            times[(j, k, lanes)].append(pack_time([j], k, samples, batch_size, lanes))
    med = {c: statistics.median(t) for c, t in times.items()}
    base = med[(1024, 1, 0)]
    print(f"\n(c) wall seconds of one pack (run_packed, in process), n=256, h=512, B={batch_size}, "
          f"{samples:,} samples, median of {rounds} rounds; lanes 0 = one per torch thread "
          f"({torch.get_num_threads()}), 1 = members in turn with all threads")
    print(f"{'J':>6} {'K':>3} {'lanes':>5} {'wall s':>8} {'s/member':>9} {'x (J=1024, K=1)':>16} {'K solo / pack':>14}")
    for j, k, lanes in cases:
        solo = med.get((j, 1, 0), base)
        print(f"{j:>6} {k:>3} {lanes:>5} {med[(j, k, lanes)]:>8.2f} {med[(j, k, lanes)] / k:>9.2f}"
              f" {med[(j, k, lanes)] / base:>16.2f} {k * solo / med[(j, k, lanes)]:>14.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1_000_000, help="training samples per run in the grid")
    p.add_argument("--dict-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    p.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--growth-dict-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--growth-samples", type=int, default=100_000, help="training samples per pack in (c)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--skip-growth", action="store_true")
    args = p.parse_args()
    print(environment())
    if not args.skip_grid:
        print(f"\n(a) grid: {len(ALPHAS)} alphas x J {args.dict_sizes}, {args.samples:,} samples per run, "
              f"W&B {args.wandb}")
        t = bench_grid(args.samples, args.dict_sizes, args.wandb)
        base, packed = t["job by job (basic launcher)"], t["packed launcher"]
        print(f"  speed-up packed / job by job: {base / packed:.2f}x (target >= {TARGET})")
    if not args.skip_growth:
        bench_growth(args.members, args.growth_dict_sizes, args.growth_samples, args.rounds, args.batch_size)


if __name__ == "__main__":
    main()
