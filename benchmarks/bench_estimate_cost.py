"""What an estimate of h costs: the quickstart's old recipe (fixed budget, full grid) against the new one
(convergence stopping, a coarse grid, refinement until the verdict holds), both through the real CLI.

    .venv/bin/python benchmarks/bench_estimate_cost.py [--out /tmp/bench_estimate] [--launcher-args ...]

Prints, per recipe: runs, total training samples, wall time of the whole command, each signal's estimate,
the consensus, the verdict and the consensus's error against the true h. The two commands run one after
the other on the same machine (samples are exact; wall time is as noisy as the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_sweep.record import ESTIMATES_FILE, RESULTS_FILE  # noqa: E402

RECIPES = {
    # The quickstart as it was until the convergence rule: six J, 2 M samples per run, no refinement.
    "fixed budget, full grid": ["experiment=quickstart", "dict_size=16,32,48,64,96,128", "train.converge=false",
                                "train.num_samples=2000000", "train.eval_every=1000000",
                                "hydra.callbacks.report.refine_rounds=0"],
    # The quickstart now: four J, convergence stopping (4 M cap), refinement while not trusted.
    "converge + refine": ["experiment=quickstart"],
}


def run(name: str, overrides: list[str], sweep_dir: Path, extra: list[str]) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sae_sweep", "-m", *overrides, *extra, "train.progress=false",
                           "logger.wandb.mode=disabled", f"hydra.sweep.dir={sweep_dir}"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    runs = pd.read_parquet(sweep_dir / RESULTS_FILE)
    (group,) = json.loads((sweep_dir / ESTIMATES_FILE).read_text())["groups"]
    values = {e["signal"]: e["value"] for e in group["estimates"]}
    h = group["true_h"]
    return {"recipe": name, "runs": len(runs), "samples_M": runs["samples"].sum() / 1e6, "wall_s": wall,
            **values, "consensus": group["consensus"], "verdict": (group.get("verdict") or {}).get("verdict", "-"),
            "error": abs(group["consensus"] - h) / h if group["consensus"] else float("nan"), "true_h": h}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_estimate_cost"))
    p.add_argument("--launcher-args", nargs="*", default=["train.threads=1"],
                   help="overrides added to both recipes (e.g. hydra/launcher=joblib hydra.launcher.n_jobs=2)")
    args = p.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = [run(name, ov, args.out / f"{stamp}-{i}", args.launcher_args) for i, (name, ov) in enumerate(RECIPES.items())]
    print("| recipe | runs | samples | wall | dead_latents | loss_basin | agreement | consensus | error | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['runs']} | {r['samples_M']:.0f} M | {r['wall_s']:.0f} s | {r['dead_latents']} | "
              f"{r['loss_basin']} | {r['dictionary_agreement']} | {r['consensus']} | {r['error']:.0%} | {r['verdict']} |")
    base, new = rows
    print(f"\nsamples: {new['samples_M'] / base['samples_M']:.2f}x, wall time: {new['wall_s'] / base['wall_s']:.2f}x "
          f"(new / old; true h = {base['true_h']})")


if __name__ == "__main__":
    main()
