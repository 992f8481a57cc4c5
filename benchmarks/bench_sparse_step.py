"""The sparse-aware training step against the dense one and against SAELens's standard step.

    .venv/bin/python benchmarks/bench_sparse_step.py --rounds 9       # a, b, c: ~2.5 min quiet, ~6 busy
    .venv/bin/python benchmarks/bench_sparse_step.py --parts a b --rounds 9
    .venv/bin/python benchmarks/bench_sparse_step.py --parts c --dict-sizes 1024 --shares 0.005 0.01 0.02

(a) n=256, B=4096, J=4096, L0 = --l0 (default 15), times round by round, interleaved:

* dense step         what sae_sweep/train.py does per step, with ``sparse_below=0`` (never counts);
* dense step, counted  the same with a ``sparse_below`` no member falls under: the dense path plus
                     the count that decides it (what a dense member pays for the default);
* sparse step        the same with ``sparse_below=1``: every member on the sparse path.

(b) SAELens: ``SAETrainer.step`` on a ``StandardTrainingSAE`` with the same weights and the same
batch (its forward, autograd backward, gradient clipping, Adam and its dead-latent bookkeeping).
It runs in benchmarks/.venv-saelens (create it as benchmarks/README.md says; never the project's
.venv) in a subprocess (benchmarks/_saelens_step.py) that takes one step per request over a pipe,
so its steps are timed in the same rounds as (a)'s cases. Skipped, with a note, when that
environment is missing.

(c) The crossover: dense step against sparse step for codes whose active share L0/J is each of
--shares, at every J of --dict-sizes (n=256, B=4096), to choose ``TrainConfig.sparse_below``.

The sparse state: the SAE starts as SAE(n, J) does (encoder = decoder transposed, random unit
atoms), with b_enc_j set to minus the (1 - L0/J) quantile of latent j's pre-activation over the
batch, so every latent fires on L0/J of the samples and a sample has L0 active latents on average
(a trained SAE's latents fire at unequal rates, but the step's cost depends on the count of active
codes only). Adam (lr 1e-3) would move that state within a few steps (L0 15 -> 28 in five), so
before every step of every case, SAELens's included, the starting weights are copied back, outside
the timed part: L0 stays where it was set however long the timing runs.

The data are the toy generator's (n=256, h=512, 5 active features per sample on average). The
figures are medians over rounds of the per-round ratios (quartiles in brackets), as in
bench_train_step.py, so a busy machine still gives a trustworthy answer.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _timing import environment, median_ratio, spread  # noqa: E402

from sae_sweep.config import ToyDataConfig  # noqa: E402
from sae_sweep.data.toy import ToyFeatures  # noqa: E402
from sae_sweep.sae import SAE  # noqa: E402
from sae_sweep.step import StepBuffers, loss_and_grads  # noqa: E402
from sae_sweep.train import L1_EVERY  # noqa: E402

SAELENS_PYTHON = HERE / ".venv-saelens" / "bin" / "python"
TARGET_VS_SAELENS = 5.0
NEVER_SPARSE = 1e-12  # counts the codes, but no member with an active code falls under it


def sparse_sae(y_BN: torch.Tensor, j: int, l0: float, seed: int = 0) -> SAE:
    """SAE(n, J) with b_enc set so that each latent fires on l0 / J of y's samples (L0 = l0)."""
    n = y_BN.shape[1]
    sae = SAE(n, j, 1, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pre_BJ = y_BN @ sae.W_enc_KNJ[0]  # b_dec = 0
        kth = min(y_BN.shape[0], max(1, round(y_BN.shape[0] * (1.0 - l0 / j))))
        sae.b_enc_KJ[0] = -pre_BJ.kthvalue(kth, dim=0).values  # (J,) the (1 - l0/J) quantile per latent
    return sae


def measured_l0(sae: SAE, y_BN: torch.Tensor) -> float:
    buffers = StepBuffers()
    loss_and_grads(sae, y_BN, [0.0], with_l1=False, sparse_below=NEVER_SPARSE, buffers=buffers)
    return buffers.active_share[0] * sae.dict_size


def timed_rounds(cases: dict[str, Callable[[], float]], rounds: int, min_time: float,
                 warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per step of every case, one entry per round; cases alternate within each round.

    As _timing.interleaved, but every case times itself and returns the seconds of its step, so
    the reset of the starting state before each step stays outside the figures.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    iters = {name: max(1, round(min_time / fn())) for name, fn in cases.items()}
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            out[name].append(sum(fn() for _ in range(iters[name])) / iters[name])
    return out


def hand_step(y_BN: torch.Tensor, j: int, l0: float, alpha: float, sparse_below: float) -> Callable[[], float]:
    """One train.py step (loss_and_grads, finite check, projection, fused Adam, normalisation) from a
    fixed state; each call resets the state, then returns the seconds the step took."""
    sae = sparse_sae(y_BN, j, l0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    start = [p.detach().clone() for p in sae.parameters()]
    counter, buffers = itertools.count(), StepBuffers()

    def run() -> float:
        with torch.no_grad():
            for p, p0 in zip(sae.parameters(), start, strict=True):
                p.copy_(p0)
        t0 = time.perf_counter()
        mse_K, l1_K = loss_and_grads(sae, y_BN, [alpha], with_l1=next(counter) % L1_EVERY == 0,
                                     sparse_below=sparse_below, buffers=buffers)
        torch.isfinite(mse_K if l1_K is None else mse_K + l1_K).tolist()
        sae.project_decoder_grad_()
        opt.step()
        sae.normalise_decoder_()
        return time.perf_counter() - t0

    return run


class SAELensStep:
    """SAELens's training step in its own environment, one step per call (see _saelens_step.py)."""

    def __init__(self, y_BN: torch.Tensor, j: int, l0: float, alpha: float):
        sae = sparse_sae(y_BN, j, l0)
        n = y_BN.shape[1]
        with tempfile.TemporaryDirectory(prefix="bench_sparse_step_") as tmp:  # read before "ready"
            weights = Path(tmp) / "saelens_start.safetensors"
            save_file({"W_enc": sae.W_enc_KNJ[0].detach().contiguous(), "b_enc": sae.b_enc_KJ[0].detach().contiguous(),
                       "W_dec": sae.W_dec_KJN[0].detach().contiguous(), "b_dec": sae.b_dec_KN[0].detach().contiguous(),
                       "y": y_BN.contiguous()}, str(weights))
            # SAELens sums the squared error over n and the L1 over latents (weighted by the atom norms,
            # 1 here); alpha n / J makes its L1 term the same share of the loss as this project's alpha.
            cmd = [str(SAELENS_PYTHON), str(HERE / "_saelens_step.py"), "--weights", str(weights),
                   "--threads", str(torch.get_num_threads()), "--l1-coefficient", str(alpha * n / j)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.banner = self._read()

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the SAELens process ended (exit code {self.proc.wait()})")
        return line.strip()

    def ask(self, cmd: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def __call__(self) -> float:
        answer = self.ask("step").split()
        if len(answer) != 2 or answer[0] != "ok":
            raise RuntimeError(f"SAELens step failed: {' '.join(answer)}")
        return float(answer[1])  # seconds, timed in that process around the step alone

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def ratio_row(name: str, times: dict[str, list[float]], num: str, den: str) -> dict:
    lo, hi = spread(times[num], times[den])
    return {"name": name, "ratio": median_ratio(times[num], times[den]), "lo": lo, "hi": hi}


def part_ab(y_BN: torch.Tensor, args: argparse.Namespace) -> None:
    j, l0, alpha = args.j, args.l0, args.alpha
    cases: dict[str, Callable[[], float]] = {
        "dense step": hand_step(y_BN, j, l0, alpha, 0.0),
        "dense step, counted": hand_step(y_BN, j, l0, alpha, NEVER_SPARSE),
        "sparse step": hand_step(y_BN, j, l0, alpha, 1.0),
    }
    saelens = None
    if "b" in args.parts:
        if SAELENS_PYTHON.exists():
            saelens = SAELensStep(y_BN, j, l0, alpha)
            print(f"SAELens process: {saelens.banner}; its L0 at the start: {saelens.ask('l0')}")
            cases["SAELens step"] = saelens
        else:
            print(f"\n(b) skipped: {SAELENS_PYTHON} does not exist (see benchmarks/README.md)")
    try:
        times = timed_rounds(cases, args.rounds, args.min_time)
    finally:
        if saelens is not None:
            saelens.close()
    b, n = y_BN.shape
    print(f"\n(a, b) training step, n={n}, B={b}, J={j}, L0={measured_l0(sparse_sae(y_BN, j, l0), y_BN):.1f} "
          f"(L0/J = {l0 / j:.2%}), alpha={alpha}, {torch.get_num_threads()} threads")
    print(f"{'case':<22} {'samples/s':>10} {'ms/step':>9}")
    for name, t in times.items():
        print(f"{name:<22} {b / statistics.median(t):>10,.0f} {1e3 * statistics.median(t):>9.1f}")
    rows = [ratio_row("dense / sparse (speed-up)", times, "dense step", "sparse step"),
            ratio_row("counted / dense (count cost)", times, "dense step, counted", "dense step")]
    if "SAELens step" in times:
        rows += [ratio_row("SAELens / sparse", times, "SAELens step", "sparse step"),
                 ratio_row("SAELens / dense", times, "SAELens step", "dense step")]
    print(f"\n{'time ratio (median of per-round ratios)':<40} {'ratio':>7}  {'quartiles':>13}")
    for r in rows:
        mark = ""
        if r["name"] == "SAELens / sparse" and j == 4096 and 10 <= l0 <= 20:  # the target case
            mark = "  ok" if r["ratio"] >= TARGET_VS_SAELENS else f"  BELOW TARGET ({TARGET_VS_SAELENS:.0f}x)"
        print(f"{r['name']:<40} {r['ratio']:>7.2f}  [{r['lo']:.2f}, {r['hi']:.2f}]{mark}")


def part_c(y_BN: torch.Tensor, args: argparse.Namespace) -> None:
    b, n = y_BN.shape
    rows = []
    for j in args.dict_sizes:
        cases = {"dense": hand_step(y_BN, j, max(args.shares) * j, args.alpha, 0.0)}
        for share in args.shares:
            cases[f"sparse {share}"] = hand_step(y_BN, j, share * j, args.alpha, 1.0)
        times = timed_rounds(cases, args.rounds, args.min_time)
        for share in args.shares:
            name = f"sparse {share}"
            lo, hi = spread(times["dense"], times[name])
            rows.append({"J": j, "share": share, "l0": measured_l0(sparse_sae(y_BN, j, share * j), y_BN),
                         "dense_ms": 1e3 * statistics.median(times["dense"]),
                         "sparse_ms": 1e3 * statistics.median(times[name]),
                         "ratio": median_ratio(times["dense"], times[name]), "lo": lo, "hi": hi})
    print(f"\n(c) crossover, n={n}, B={b}: speed-up = dense step time / sparse step time (median of "
          f"per-round ratios [quartiles]; > 1: the sparse path wins)")
    print(f"{'J':>5}  {'L0/J':>6}  {'L0':>6}  {'dense ms':>9}  {'sparse ms':>9}  {'speed-up':>8}  {'quartiles':>13}")
    for r in rows:
        print(f"{r['J']:>5}  {r['share']:>6.2%}  {r['l0']:>6.1f}  {r['dense_ms']:>9.1f}  {r['sparse_ms']:>9.1f}  "
              f"{r['ratio']:>8.2f}  [{r['lo']:.2f}, {r['hi']:.2f}]")
    for j in args.dict_sizes:
        print(f"J={j}: {crossover([r for r in rows if r['J'] == j])}")


def crossover(rows: list[dict]) -> str:
    """Where the speed-up falls through 1, interpolated linearly between the shares timed."""
    for lo, hi in itertools.pairwise(sorted(rows, key=lambda r: r["share"])):
        if lo["ratio"] >= 1.0 > hi["ratio"]:
            share = lo["share"] + (hi["share"] - lo["share"]) * (lo["ratio"] - 1.0) / (lo["ratio"] - hi["ratio"])
            return f"the sparse step is faster below L0/J = {share:.1%} (interpolated)"
    if all(r["ratio"] >= 1.0 for r in rows):
        return "the sparse step is faster at every share timed"
    return "no single crossover among the shares timed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--j", type=int, default=4096, help="dictionary size of parts a and b")
    ap.add_argument("--l0", type=float, default=15.0, help="active latents per sample in parts a and b")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--dict-sizes", type=int, nargs="+", default=[1024, 4096], help="part c")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.02, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25],
                    help="part c: active shares L0/J")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are over these")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per case per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(environment())
    y_BN = ToyFeatures(ToyDataConfig(n=args.n)).sample(args.batch_size, torch.Generator().manual_seed(0))
    if "a" in args.parts or "b" in args.parts:
        part_ab(y_BN, args)
    if "c" in args.parts:
        part_c(y_BN, args)
    print(f"\nend: {environment()}")


if __name__ == "__main__":
    main()
