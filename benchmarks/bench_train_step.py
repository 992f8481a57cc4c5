"""Training-step throughput against the bare fp32 GEMM floor measured in the same run.

    .venv/bin/python benchmarks/bench_train_step.py            # n=256, J in {512, 1024, 4096}, B=4096
    .venv/bin/python benchmarks/bench_train_step.py --dict-sizes 1024 --rounds 5 --skip-toy

For every J it times, interleaved round by round:

* floor           the five GEMMs of one step, nothing else: y@W_enc (B,N)(N,J), c@W_dec (B,J)(J,N),
                  dz@W_dec^T, c^T@dz, x^T@dpre, into preallocated outputs;
* step            what sae_sweep/train.py does per step: loss_and_grads, project_decoder_grad_,
                  fused Adam, normalise_decoder_ (plus its finite-loss check);
* loss_and_grads  the hand-written forward and backward alone;
* autograd step   the same step with sae.loss(...).sum().backward() for the gradients;
* autograd l&g    sae.loss(...).sum().backward() alone;

and prints samples/s (median over rounds) and the share of the floor each reaches (median over
rounds of floor time / case time, with the quartiles). The target is step >= 0.85 of the floor.
Then (unless --skip-toy) the toy generator's samples/s, for comparison with the step's.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import environment, interleaved, median_ratio, spread  # noqa: E402

from sae_sweep.config import ToyDataConfig  # noqa: E402
from sae_sweep.data.toy import ToyFeatures  # noqa: E402
from sae_sweep.sae import SAE  # noqa: E402
from sae_sweep.step import StepBuffers, loss_and_grads  # noqa: E402
from sae_sweep.train import L1_EVERY  # noqa: E402

TARGET = 0.85


def gemm_floor(y_BN: torch.Tensor, j: int, gen: torch.Generator):
    """The five GEMMs of one step with the step's shapes and layouts, outputs preallocated."""
    b, n = y_BN.shape
    w_enc = torch.randn(n, j, generator=gen) / n**0.5
    w_dec = torch.randn(j, n, generator=gen) / n**0.5
    c, dc = torch.empty(b, j), torch.empty(b, j)
    z = torch.empty(b, n)
    g_dec, g_enc = torch.empty(j, n), torch.empty(n, j)

    def run() -> None:
        torch.mm(y_BN, w_enc, out=c)  # (B,N)(N,J)
        torch.mm(c, w_dec, out=z)  # (B,J)(J,N)
        torch.mm(z, w_dec.T, out=dc)  # dz @ W_dec^T
        torch.mm(c.T, z, out=g_dec)  # c^T @ dz
        torch.mm(y_BN.T, dc, out=g_enc)  # x^T @ dpre

    return run


def make_sae(n: int, j: int, seed: int) -> tuple[SAE, torch.optim.Optimizer]:
    sae = SAE(n, j, 1, generator=torch.Generator().manual_seed(seed))
    return sae, torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)


def hand_step(sae: SAE, opt: torch.optim.Optimizer, y_BN: torch.Tensor, alpha: list[float], full: bool):
    counter, buffers = itertools.count(), StepBuffers()  # one per SAE, made outside the timed step

    def run() -> None:
        if not full:
            loss_and_grads(sae, y_BN, alpha, buffers=buffers)
            return
        # exactly the per-step work of train.train, which measures the L1 term every L1_EVERY steps
        mse_K, l1_K = loss_and_grads(sae, y_BN, alpha, with_l1=next(counter) % L1_EVERY == 0, buffers=buffers)
        torch.isfinite(mse_K if l1_K is None else mse_K + l1_K).tolist()
        sae.project_decoder_grad_()
        opt.step()
        sae.normalise_decoder_()

    return run


def autograd_step(sae: SAE, opt: torch.optim.Optimizer, y_BN: torch.Tensor, alpha: list[float], full: bool):
    alpha_t = torch.tensor(alpha)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss_K, _, _ = sae.loss(y_BN, alpha_t)
        loss_K.sum().backward()
        if full:
            torch.isfinite(loss_K.detach()).tolist()
            sae.project_decoder_grad_()
            opt.step()
            sae.normalise_decoder_()

    return run


def bench_dict_size(y_BN: torch.Tensor, j: int, alpha: float, rounds: int, min_time: float) -> list[dict]:
    n = y_BN.shape[1]
    gen = torch.Generator().manual_seed(j)
    cases = {"floor (5 GEMMs)": gemm_floor(y_BN, j, gen)}
    sae, opt = make_sae(n, j, 0)
    cases["step"] = hand_step(sae, opt, y_BN, [alpha], full=True)
    sae, opt = make_sae(n, j, 0)
    cases["loss_and_grads"] = hand_step(sae, opt, y_BN, [alpha], full=False)
    sae, opt = make_sae(n, j, 0)
    cases["autograd step"] = autograd_step(sae, opt, y_BN, [alpha], full=True)
    sae, opt = make_sae(n, j, 0)
    cases["autograd l&g"] = autograd_step(sae, opt, y_BN, [alpha], full=False)
    times = interleaved(cases, rounds, min_time)
    floor = times["floor (5 GEMMs)"]
    rows = []
    for name, t in times.items():
        lo, hi = spread(floor, t)
        rows.append({"J": j, "case": name, "samples_s": y_BN.shape[0] / statistics.median(t),
                     "ms": 1e3 * statistics.median(t), "ratio": median_ratio(floor, t), "lo": lo, "hi": hi})
    return rows


def print_step_table(rows: list[dict], b: int, n: int, alpha: float) -> None:
    print(f"\ntraining step, n={n}, B={b}, K=1, alpha={alpha} (ratio = floor time / case time, median "
          f"over rounds [quartiles]; target step >= {TARGET:.2f})")
    print(f"{'J':>5}  {'case':<16} {'samples/s':>10} {'ms/step':>9}  {'of floor':>8}  {'quartiles':>11}")
    for r in rows:
        mark = ""
        if r["case"] in ("step", "loss_and_grads"):
            mark = "  ok" if r["ratio"] >= TARGET else "  BELOW TARGET"
        print(f"{r['J']:>5}  {r['case']:<16} {r['samples_s']:>10,.0f} {r['ms']:>9.1f}  {r['ratio']:>8.3f}  "
              f"[{r['lo']:.2f}, {r['hi']:.2f}]{mark}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dict-sizes", type=int, nargs="+", default=[512, 1024, 4096])
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are over these")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per case per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    ap.add_argument("--skip-toy", action="store_true", help="do not time the toy generator")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(environment())

    toy = ToyFeatures(ToyDataConfig(n=args.n))
    y_BN = toy.sample(args.batch_size, torch.Generator().manual_seed(0))
    rows = []
    for j in args.dict_sizes:
        rows += bench_dict_size(y_BN, j, args.alpha, args.rounds, args.min_time)
    print_step_table(rows, args.batch_size, args.n, args.alpha)

    if not args.skip_toy:
        from bench_toy import bench_toy, print_toy_table

        step_rate = {r["J"]: r["samples_s"] for r in rows if r["case"] == "step"}
        print_toy_table(bench_toy([256, 4096], [0.5, 1.0], args.rounds, args.min_time), step_rate)
    print(f"\nend: {environment()}")


if __name__ == "__main__":
    main()
