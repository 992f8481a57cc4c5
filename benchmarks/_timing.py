"""Interleaved, repeated timing: every case runs once per round, so slow phases of a noisy machine
hit all cases alike, and ratios are taken within a round before the median over rounds."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Iterations of ``fn`` that take at least ``min_time`` seconds (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, round(min_time / once))


def interleaved(
    cases: dict[str, Callable[[], object]], rounds: int, min_time: float, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of every case, one entry per round; cases alternate within each round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    iters = {name: calibrate(fn, min_time) for name, fn in cases.items()}
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(iters[name]):
                fn()
            out[name].append((time.perf_counter() - t0) / iters[name])
    return out


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i] (ratios within a round cancel the machine's drift)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def spread(num: list[float], den: list[float]) -> tuple[float, float]:
    """Lower and upper quartile of the per-round ratios."""
    r = sorted(a / b for a, b in zip(num, den, strict=True))
    if len(r) < 4:
        return r[0], r[-1]
    q = statistics.quantiles(r, n=4)
    return q[0], q[2]


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {os.cpu_count()} CPUs ({cpu}) | load avg {load}")
