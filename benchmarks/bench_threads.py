"""Threads on a shared machine: the default thread policy against one thread each and the old default.

    .venv/bin/python benchmarks/bench_threads.py                 # 3 rounds, 2 concurrent runs, ~3 min
    .venv/bin/python benchmarks/bench_threads.py --concurrent 3 --rounds 5
    .venv/bin/python benchmarks/bench_threads.py --extra data.n=256 dict_size=1024   # a bigger step

Every case is real CLI runs (``python -m sae_sweep experiment=smoke``, W&B off) in subprocesses; the
time of a case is the slowest run's ``train_time_s`` from its summary.json (start-up excluded), the
cases alternate within each round and ratios are taken within a round, median over rounds.

(a) concurrent: ``--concurrent`` runs started together at the default policy vs the same runs at
    ``train.threads=1`` each. Target: ratio <= 1.15.
(b) solo: one quiet run at the default policy vs one at the old default (``SAE_SWEEP_THREAD_POLICY=off``:
    torch's own thread count, OpenMP's own wait policy). Target: ratio <= 1.10.
A machine that already runs other work (a background experiment) makes (b) less "quiet": say so
next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import environment  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_sweep.record import SUMMARY_FILE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = ["experiment=smoke", "logger.wandb.mode=disabled", "train.progress=false", "train.save_weights=false"]
CASES = {  # name: (overrides, environment)
    "policy": ([], {}),
    "threads=1": (["train.threads=1"], {}),
    "old default": ([], {"SAE_SWEEP_THREAD_POLICY": "off"}),
    "1 thread": (["train.threads=1"], {}),
    "2 spinning": (["train.threads=2"], {"SAE_SWEEP_THREAD_POLICY": "off"}),
    "2 passive": (["train.threads=2"], {}),
    "2 spin 1e4": (["train.threads=2"], {"SAE_SWEEP_THREAD_POLICY": "off", "GOMP_SPINCOUNT": "10000"}),
    "2 spin 1e5": (["train.threads=2"], {"SAE_SWEEP_THREAD_POLICY": "off", "GOMP_SPINCOUNT": "100000"}),
}
TABLE_CASES = ("1 thread", "2 spinning", "2 passive", "policy")


def launch(case: str, k: int, extra: list[str], tmp: Path) -> float:
    """Start k runs of ``case`` together; the slowest one's training seconds."""
    overrides, env_extra = CASES[case]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), **env_extra}
    for var in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "SAE_SWEEP_THREAD_POLICY"):
        if var not in env_extra:
            env.pop(var, None)
    dirs = [Path(tempfile.mkdtemp(dir=tmp)) for _ in range(k)]
    procs = [subprocess.Popen([sys.executable, "-m", "sae_sweep", *BASE, *extra, *overrides, f"hydra.run.dir={d}"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for d in dirs]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"{case}: run failed: {err[-2000:]}")
    summaries = [json.loads((d / SUMMARY_FILE).read_text()) for d in dirs]
    return max(s["train_time_s"] for s in summaries), summaries[0]["threads"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    ap.add_argument("--table", nargs="*", metavar="NxJ",
                    help="instead of (a)/(b): time 1 thread, 2 spinning, 2 passive and the policy at each step "
                         "size (e.g. 256x1024 256x4096), alone and --concurrent at once")
    ap.add_argument("--cases", nargs="*", default=list(TABLE_CASES), choices=list(CASES),
                    help="the --table cases, timed in this order within a round")
    ap.add_argument("--samples", type=int, default=200_000, help="train.num_samples of each --table run")
    args = ap.parse_args()
    if args.table is not None:
        table(args)
        return
    print(environment())
    print(f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine counts against every case)")
    plan = [("concurrent", "policy", args.concurrent), ("concurrent", "threads=1", args.concurrent),
            ("solo", "policy", 1), ("solo", "old default", 1)]
    times: dict[tuple[str, str], list[float]] = {(w, c): [] for w, c, _ in plan}
    threads: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for what, case, k in plan:
                t, n_threads = launch(case, k, args.extra, Path(tmp))
                times[(what, case)].append(t)
                threads[(what, case)] = n_threads
            print(f"round {r + 1}: " + ", ".join(f"{w} {c} {v[-1]:.2f}s" for (w, c), v in times.items()), flush=True)
    print(f"\n{'case':<32} {'threads':>7} {'median train s':>15}")
    for (what, case), v in times.items():
        print(f"{what + ' ' + case:<32} {threads[(what, case)]:>7} {statistics.median(v):>15.2f}")

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    conc = ratio(("concurrent", "policy"), ("concurrent", "threads=1"))
    solo = ratio(("solo", "policy"), ("solo", "old default"))
    print(f"\n(a) {args.concurrent} concurrent runs, policy / threads=1 each: {conc:.2f}  (target <= 1.15: "
          f"{'ok' if conc <= 1.15 else 'MISSED'})")
    print(f"(b) one quiet run, policy / old default:              {solo:.2f}  (target <= 1.10: "
          f"{'ok' if solo <= 1.10 else 'MISSED'})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def table(args: argparse.Namespace) -> None:
    """Median train seconds per (step size, concurrency, case); cases alternate within each round."""
    print(environment())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.table or ["256x1024", "256x2048", "256x4096"]]
    ks = sorted({1, args.concurrent})
    times: dict[tuple[tuple[int, int], int, str], list[float]] = {}
    threads: dict[tuple[tuple[int, int], int, str], int] = {}
    cases = args.cases
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n, j in sizes:
                extra = [*args.extra, f"data.n={n}", f"data.h={2 * n}", f"dict_size={j}",
                         f"train.num_samples={args.samples}", f"train.eval_every={args.samples}"]
                for k in ks:
                    for case in cases:
                        t, n_threads = launch(case, k, extra, Path(tmp))
                        times.setdefault(((n, j), k, case), []).append(t)
                        threads[((n, j), k, case)] = n_threads
                    print(f"round {r + 1} n={n} J={j} x{k}: " + ", ".join(
                        f"{c} {times[((n, j), k, c)][-1]:.2f}s" for c in cases), flush=True)
    batch = 256
    for a in args.extra:
        if a.startswith("train.batch_size="):
            batch = int(a.split("=")[1])
    print("\n| step (B x n x J) | runs at once | " + " | ".join(cases) + " | fastest |")
    print("|---|---|" + "---|" * (len(cases) + 1))
    for n, j in sizes:
        for k in ks:
            med = {c: statistics.median(times[((n, j), k, c)]) for c in cases}
            cells = " | ".join(f"{med[c]:.2f}" for c in cases)
            print(f"| n={n}, J={j} (2^{(batch * n * j).bit_length() - 1}) | {k} | {cells} | "
                  f"{min(med, key=med.get)} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
