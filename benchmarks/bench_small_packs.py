"""Sweeps of small SAEs: stacked packs vs today's per-J packs vs solo runs, and the quickstart's wall time.

    .venv/bin/python benchmarks/bench_small_packs.py                      # (a) + (b), ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_small_packs.py --samples 500000     # a quicker (b)
    .venv/bin/python benchmarks/bench_small_packs.py --skip-sweep         # (a) only, ~1 min

(a) One training step (loss and gradients, decoder constraint, Adam) of the quickstart's 24 members
    (J 16, 32, 64, 128 x alpha 0.1, 0.3, 1 x seed 0, 1; n=32, B=256), on one torch thread (one core,
    as each packed lane runs), interleaved rounds, medians:
      solo          24 single-member steps (what 24 runs job by job compute per step)
      per-J packs   the groups today's packed launcher built: one per (J, seed), members in turn
      padded pack   all 24 stacked into one group padded to J=128 (one batched computation)
      planned pack  ``packing.plan`` (train.stacked=auto): stacked groups bucketed by the cost model
    and the GEMM floor: the members' own (unpadded) 5 GEMMs per step at this core's GEMM rate,
    measured in the same run on one large GEMM. Ratios are within a round, then the median.
(b) The quickstart sweep (``experiment=quickstart``, refinement off) through the real CLI, job by job
    (Hydra's basic launcher) and with ``hydra/launcher=packed``, same threads; wall times, their
    ratio, and the largest relative difference of every record between the two (the same cells).
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

from _timing import environment, interleaved, median_ratio, spread  # noqa: E402

from sae_sweep import packing  # noqa: E402
from sae_sweep.record import COMPLETED, RESULTS_FILE  # noqa: E402
from sae_sweep.sae import SAE  # noqa: E402
from sae_sweep.train import _Group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N, B = 32, 256
SIZES, ALPHAS, SEEDS = (16, 32, 64, 128), (0.1, 0.3, 1.0), (0, 1)
COMPARED = ("loss", "mse", "l1", "mmcs", "mmcs_learned", "fvu", "l0", "dead", "samples")


def members() -> list[tuple[int, float, int]]:
    return [(j, a, s) for j in SIZES for a in ALPHAS for s in SEEDS]


def _sae(j: int, seed: int) -> SAE:
    return SAE(N, j, 1, generator=torch.Generator().manual_seed(1000 * j + seed))


def group_of(idx: list[int], stacked: bool) -> _Group:
    ms = members()
    sae = SAE.stack([_sae(ms[i][0], ms[i][2]) for i in idx], pad=stacked)
    return _Group(sae, [ms[i][1] for i in idx], list(idx), 1e-3, 0.15, [ms[i][2] for i in idx], stacked)


def step_cases(y_SBN: torch.Tensor) -> tuple[dict, float]:
    """The four ways to step the 24 members, and their unpadded GEMM flops per step."""
    ms = members()
    running = [True] * len(ms)

    def stepper(groups: list[_Group]):
        def run() -> None:
            for g in groups:
                g.step(y_SBN, False, running)
        return run

    per_j = [[i for i, m in enumerate(ms) if (m[0], m[2]) == key] for key in sorted({(m[0], m[2]) for m in ms})]
    plan = packing.plan([m[0] for m in ms], [m[2] for m in ms], N, B, 1, "cpu")
    cases = {
        "solo": stepper([group_of([i], False) for i in range(len(ms))]),
        "per-J packs": stepper([group_of(idx, False) for idx in per_j]),
        "padded pack": stepper([group_of(list(range(len(ms))), True)]),
        "planned pack": stepper([group_of(p.members, p.stacked) for p in plan]),
    }
    flops = sum(10.0 * B * N * m[0] for m in ms)  # 5 GEMMs of 2 B N J each
    return cases, flops


def big_gemm() -> tuple[object, float]:
    """One large fp32 GEMM and its flops: timed in every round, it gives that round's GEMM rate."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    c = torch.empty(1024, 1024)
    return (lambda: torch.mm(a, b, out=c)), 2.0 * 1024**3


def bench_steps(rounds: int, min_time: float) -> None:
    torch.set_num_threads(1)
    y_SBN = torch.randn(len(SEEDS), B, N, generator=torch.Generator().manual_seed(0))
    cases, flops = step_cases(y_SBN)
    mm, mm_flops = big_gemm()
    t = interleaved({**cases, "GEMM": mm}, rounds=rounds, min_time=min_time)
    floor_R = [flops * x / mm_flops for x in t.pop("GEMM")]  # the members' own GEMMs at each round's rate
    plan = packing.plan([m[0] for m in members()], [m[2] for m in members()], N, B, 1, "cpu")
    rate = statistics.median(flops / f for f in floor_R)
    print(f"\n(a) one step of the quickstart's 24 members (n={N}, B={B}), one torch thread, median of {rounds} rounds")
    print(f"    planned pack: {len(plan)} stacked groups, J buckets "
          f"{[sorted({members()[i][0] for i in p.members}) for p in plan]}")
    print(f"    GEMM floor: {flops / 1e6:.0f} MFLOP per step (unpadded) at {rate / 1e9:.0f} GFLOP/s "
          f"(1024^3 GEMM, same rounds) = {flops / rate * 1e3:.2f} ms")
    print(f"{'case':>14} {'ms/step':>9} {'x solo':>8} {'x per-J':>8} {'per-J / case (IQR)':>20} {'x floor':>8}")
    for name, times in t.items():
        lo, hi = spread(t["per-J packs"], times)
        print(f"{name:>14} {statistics.median(times) * 1e3:>9.2f} {median_ratio(times, t['solo']):>8.2f} "
              f"{median_ratio(times, t['per-J packs']):>8.2f} {median_ratio(t['per-J packs'], times):>9.2f}"
              f" ({lo:.2f}-{hi:.2f}) {median_ratio(times, floor_R):>8.2f}")


def sweep_cmd(sweep_dir: Path, packed: bool, samples: int | None, threads: int) -> list[str]:
    extra = [f"train.num_samples={samples}", f"train.eval_every={max(samples // 8, 256)}"] if samples else []
    return [sys.executable, "-m", "sae_sweep", "-m", "experiment=quickstart", "train.progress=false",
            "logger.wandb.mode=disabled", "hydra.callbacks.report.refine_rounds=0", f"hydra.sweep.dir={sweep_dir}",
            *([f"train.threads={threads}"] if threads else []), *extra,
            *(["hydra/launcher=packed", f"hydra.launcher.threads={threads}"] if packed else ["hydra/launcher=basic"])]


def bench_sweep(samples: int | None, threads: int, out: Path | None) -> None:
    import pandas as pd

    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    wall, tables = {}, {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = out or Path(tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        for name, packed in (("job by job", False), ("packed", True)):
            sweep = Path(tmp) / name.replace(" ", "_")
            t0 = time.perf_counter()
            proc = subprocess.run(sweep_cmd(sweep, packed, samples, threads), cwd=tmp, env=env,
                                  capture_output=True, text=True)
            wall[name] = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{name} sweep failed:\n{proc.stderr[-3000:]}")
            tables[name] = pd.read_parquet(sweep / RESULTS_FILE).set_index(["alpha", "dict_size", "seed"]).sort_index()
            print(f"  {name}: {wall[name]:.1f} s", flush=True)
    a, b = tables["job by job"], tables["packed"]
    assert list(a.index) == list(b.index), "the two sweeps ran different cells"
    diff = {}
    for c in (c for c in COMPARED if c in a):
        x, y = a[c].astype(float), b[c].astype(float)
        diff[c] = float(((x - y).abs() / x.abs().clip(lower=1e-6)).max())
    label = f"{samples:,} samples cap" if samples else "4 M samples cap, converge"
    print(f"\n(b) quickstart sweep ({len(a)} runs, {label}, threads {threads or 'default'}): "
          f"job by job {wall['job by job']:.1f} s, packed {wall['packed']:.1f} s, "
          f"speed-up {wall['job by job'] / wall['packed']:.2f}x")
    print("    largest relative difference packed vs job by job: "
          + ", ".join(f"{c} {v:.1e}" for c, v in diff.items()))
    print(f"    same stopping sample in {(a['samples'] == b['samples']).sum()} of {len(a)} runs; "
          f"status completed: {(b['status'] == COMPLETED).sum()} packed, {(a['status'] == COMPLETED).sum()} job by job")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per case per round in (a)")
    p.add_argument("--samples", type=int, default=None, help="train.num_samples per run in (b) (default: the recipe's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of every run in (b); 0 = default")
    p.add_argument("--out", type=Path, default=None, help="keep the two sweeps in this dir (default: a temporary one)")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-sweep", action="store_true")
    args = p.parse_args()
    print(environment())
    if not args.skip_steps:
        bench_steps(args.rounds, args.min_time)
    if not args.skip_sweep:
        bench_sweep(args.samples, args.threads, args.out)


if __name__ == "__main__":
    main()
