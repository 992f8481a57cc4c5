"""Activation caching and streaming: extraction tokens/s, and what reading the .npy costs training.

    .venv/bin/python benchmarks/bench_cache.py                       # bundled text -> a temporary file
    .venv/bin/python benchmarks/bench_cache.py --file /tmp/acts/smollm2_l2.npy --rounds 3

Part 1, extraction (SmolLM2, real windows of the bundled text), interleaved round by round:

* extract  what sae_sweep.data.extract.extract does per batch: the forward up to block ``layer`` (the hook
           stops it there), drop position 0, float16 cast, memmap write, float64 sums;
* full     the same windows through the whole model (every block), the baseline.

Part 2, SAE training (J=1024, B=4096, K=1, the house training step) on rows of an activation file,
interleaved round by round; each call is the steps of one shuffle group (chunk_rows x shuffle_chunks
rows, or the whole training set when smaller), so the group's read is amortised exactly once per call:

* in memory   the same rows already in memory as a float32 tensor, sliced in a loop;
* streaming   ActivationShards(ActivationsDataConfig(path)).batches(B, seed), i.e. the memmap read,
              float32 conversion, centring and in-memory shuffle, then the step;
* stream only the batches alone, no step (the reader's own samples/s).

Ratio = in-memory time / streaming time (median over rounds of the per-round ratio). Target: streaming
costs < 10% of training throughput, i.e. ratio >= 0.90.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import environment, interleaved, median_ratio, spread  # noqa: E402

from sae_sweep.config import ActivationsDataConfig  # noqa: E402
from sae_sweep.data.activations import ActivationShards  # noqa: E402
from sae_sweep.data.corpus import load_corpus  # noqa: E402
from sae_sweep.data.extract import CacheConfig, extract, separator_id, token_stream  # noqa: E402
from sae_sweep.data.lm import ResidualHook, load_model  # noqa: E402
from sae_sweep.sae import SAE  # noqa: E402
from sae_sweep.step import StepBuffers, loss_and_grads  # noqa: E402
from sae_sweep.train import L1_EVERY  # noqa: E402

TARGET = 0.90


# --- part 1: extraction ---------------------------------------------------------------------------------


def bench_extract(lm, layer: int, windows: int, context: int, rounds: int) -> dict[str, list[float]]:
    sep, _ = separator_id(lm.tokenizer)
    stream = token_stream(load_corpus("bundled", Path("unused")), lm.tokenizer, sep)
    starts = np.random.default_rng(0).permutation(len(stream) // context)[:windows] * context
    ids_BT = torch.from_numpy(stream[starts[:, None] + np.arange(context)].astype(np.int64))
    hook, n = ResidualHook(lm, layer), lm.d_model
    out = np.lib.format.open_memmap(Path(tempfile.mkdtemp()) / "x.npy", mode="w+", dtype=np.float16,
                                    shape=(windows * (context - 1), n))
    sum_N = np.zeros(n)

    def extract_batch() -> None:
        y = hook(ids_BT)[:, 1:, :].reshape(-1, n).numpy().astype(np.float16)
        out[:] = y
        y64 = y.astype(np.float64)
        np.add(sum_N, y64.sum(axis=0), out=sum_N)
        np.sqrt((y64 * y64).sum(axis=1)).sum()

    def full_forward() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids_BT, use_cache=False)

    return interleaved({"extract": extract_batch, "full": full_forward}, rounds, min_time=0.0, warmup=1)


# --- part 2: streaming vs in memory -----------------------------------------------------------------------


def step_fn(n: int, j: int, alpha: float):
    """One training step on a given batch, as sae_sweep/train.py does it (see bench_train_step.py)."""
    sae = SAE(n, j, 1, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    counter, buffers = itertools.count(), StepBuffers()

    def step(y_BN: torch.Tensor) -> None:
        mse_K, l1_K = loss_and_grads(sae, y_BN, [alpha], with_l1=next(counter) % L1_EVERY == 0, buffers=buffers)
        torch.isfinite(mse_K if l1_K is None else mse_K + l1_K).tolist()
        sae.project_decoder_grad_()
        opt.step()
        sae.normalise_decoder_()

    return step


def bench_stream(path: str, j: int, batch: int, alpha: float, eval_size: int, rounds: int) -> tuple[dict, int]:
    src = ActivationShards(ActivationsDataConfig(path=path, eval_size=eval_size))
    group_rows = min(src.train_rows, src.cfg.chunk_rows * src.cfg.shuffle_chunks)
    k = max(1, math.ceil(group_rows / batch))  # steps per call: one shuffle group's worth
    rows_RN = np.load(path, mmap_mode="r")
    y_all = torch.from_numpy(rows_RN[: src.train_rows].astype(np.float32) - src.mean_N)  # (rows, n), centred
    starts = itertools.cycle(range(0, src.train_rows - batch + 1, batch))
    stream, stream_only = src.batches(batch, seed=0), src.batches(batch, seed=1)
    step_mem, step_stream = step_fn(src.n, j, alpha), step_fn(src.n, j, alpha)

    def in_memory() -> None:
        for _ in range(k):
            lo = next(starts)
            step_mem(y_all[lo : lo + batch])

    def streaming() -> None:
        for _ in range(k):
            step_stream(next(stream))

    def reader() -> None:
        for _ in range(k):
            next(stream_only)

    cases = {"in memory": in_memory, "streaming": streaming, "stream only": reader}
    return interleaved(cases, rounds, min_time=0.0, warmup=1), k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default="", help="an existing activation .npy; default: extract the bundled text")
    ap.add_argument("--file-rows", type=int, default=24_000, help="rows to extract when --file is not given")
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--windows", type=int, default=32, help="windows of 128 tokens per timed extraction call")
    ap.add_argument("--dict-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--eval-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are over these")
    ap.add_argument("--cache-dir", default="", help="sae_sweep model/corpus cache (default: the user cache)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(environment())
    cache_dir = CacheConfig(out="x.npy", cache_dir=args.cache_dir).resolved_cache_dir()

    t0 = time.perf_counter()
    lm = load_model("smollm2", cache_dir, "cpu")
    load_s = time.perf_counter() - t0
    times = bench_extract(lm, args.layer, args.windows, 128, args.rounds)
    tokens = args.windows * 128
    print(f"\nextraction, SmolLM2 layer {args.layer} of {lm.n_layers}, {args.windows} windows x 128 tokens per call "
          f"(model load from the converted cache: {load_s:.1f} s)")
    print(f"{'case':<10} {'tokens/s':>10} {'s/call':>8}")
    for name, t in times.items():
        print(f"{name:<10} {tokens / statistics.median(t):>10,.0f} {statistics.median(t):>8.2f}")
    lo, hi = spread(times["full"], times["extract"])
    print(f"extract is {median_ratio(times['full'], times['extract']):.1f}x the full forward's speed [{lo:.1f}, {hi:.1f}]")

    path = args.file
    tmp = None
    if not path:
        tmp = tempfile.TemporaryDirectory()
        path = str(Path(tmp.name) / "bundled_l2.npy")
        cfg = CacheConfig(out=path, corpus="bundled", tokens=args.file_rows, layer=args.layer, device="cpu",
                          cache_dir=str(cache_dir), progress=False)
        meta = extract(cfg, lm)[0]
        print(f"\nwrote {path}: {args.file_rows} rows in {meta['seconds']:.1f} s = {meta['tokens_per_s']:,.0f} tokens/s "
              f"end to end (tokenising, forward, write)")
    del lm
    times, k = bench_stream(path, args.dict_size, args.batch_size, args.alpha, args.eval_size, args.rounds)
    rows = np.load(path, mmap_mode="r").shape
    print(f"\ntraining on {path} {rows}, J={args.dict_size}, B={args.batch_size}, {k} steps per call "
          f"(ratio = in-memory time / case time; target streaming >= {TARGET:.2f})")
    print(f"{'case':<12} {'samples/s':>10} {'ratio':>7}  {'quartiles':>11}")
    mem = times["in memory"]
    for name, t in times.items():
        lo, hi = spread(mem, t)
        r = median_ratio(mem, t)
        mark = ("  ok" if r >= TARGET else "  BELOW TARGET") if name == "streaming" else ""
        print(f"{name:<12} {k * args.batch_size / statistics.median(t):>10,.0f} {r:>7.3f}  [{lo:.2f}, {hi:.2f}]{mark}")
    if tmp is not None:
        tmp.cleanup()
    print(f"\nend: {environment()}")


if __name__ == "__main__":
    main()
