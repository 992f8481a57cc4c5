"""The training loop: K SAE members of one shape in lockstep on one stream of batches.

Reads top to bottom like the algorithm: draw a batch, compute loss and gradients (step.py), keep
decoder atoms at unit norm, Adam, and every ``eval_every`` samples evaluate on the held-out set and
hand a flat dict of metrics to the sinks. Imports no hydra, optuna or wandb.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_sweep import metrics
from sae_sweep.config import TrainConfig
from sae_sweep.sae import SAE
from sae_sweep.sinks import MetricSink
from sae_sweep.step import auto_sparse_below, loss_and_grads

# Statuses a member can end in. "completed" is the only success.
COMPLETED, DIVERGED, PRUNED, INTERRUPTED, FAILED = "completed", "diverged", "pruned", "interrupted", "failed"

# The L1 term of the training loss is measured every L1_EVERY steps (it costs a pass over the codes
# and only feeds the logged train_loss); the reconstruction term, which catches divergence, every step.
L1_EVERY = 16

# should_stop(member, samples_seen, metrics) -> True to stop that member (e.g. an Optuna pruner).
StopFn = Callable[[int, int, dict[str, float]], bool]


@dataclass
class EvalSet:
    y_BN: torch.Tensor  # held-out activations
    features_HN: torch.Tensor | None = None  # ground-truth directions, when known
    chunk: int = 1024  # rows per forward pass: bounds eval memory at (chunk, J) per member (and is faster than 4096 on CPU)


@dataclass
class MemberOutcome:
    status: str = COMPLETED
    samples: int = 0
    final: dict[str, float] = field(default_factory=dict)
    message: str = ""
    latent_frequency_J: torch.Tensor | None = None  # firing frequency per latent at the last evaluation
    latent_mean_J: torch.Tensor | None = None  # mean activation per latent at the last evaluation
    weights: SAE | None = None  # a member stopped early (diverged, pruned): its weights when it stopped


@torch.no_grad()
def eval_stats(sae: SAE, eval_set: EvalSet) -> list[metrics.CodeStats]:
    """Every member's CodeStats over the held-out set."""
    device = sae.W_dec_KJN.device
    stats = [metrics.CodeStats(sae.n, sae.dict_size, device) for _ in range(sae.k)]
    for start in range(0, eval_set.y_BN.shape[0], eval_set.chunk):
        y_BN = eval_set.y_BN[start : start + eval_set.chunk].to(device)
        z_KBN, c_KBJ = sae(y_BN)
        for k in range(sae.k):
            stats[k].update(y_BN, z_KBN[k], c_KBJ[k])
    return stats


@torch.no_grad()
def evaluate(
    sae: SAE, alpha_K: Sequence[float], eval_set: EvalSet, stats: list[metrics.CodeStats] | None = None
) -> list[dict[str, float]]:
    """Metrics of every member on the held-out set: CodeStats plus ground-truth recovery if known."""
    device = sae.W_dec_KJN.device
    stats = stats if stats is not None else eval_stats(sae, eval_set)
    out = []
    for k in range(sae.k):
        row = stats[k].results(alpha_K[k])
        if eval_set.features_HN is not None:
            features = eval_set.features_HN.to(device)
            row.update(metrics.dictionary_metrics(features, sae.dictionary(k), stats[k].ever_active_J))
        out.append(row)
    return out


def _eval_steps(cfg: TrainConfig) -> tuple[int, int]:
    steps = cfg.num_samples // cfg.batch_size
    every = max(1, math.ceil(cfg.eval_every / cfg.batch_size))
    return steps, every


@dataclass
class _Member:
    """Where global member m lives: group g of the pack, member k of that group's SAE."""

    g: int
    k: int


def _members(saes: Sequence[SAE]) -> list[_Member]:
    return [_Member(g, k) for g, sae in enumerate(saes) for k in range(sae.k)]


def plan_lanes(costs: Sequence[float], lanes: int) -> list[list[int]]:
    """Split groups (by index) over ``lanes`` lanes of near-equal total cost: largest first, to the lightest lane."""
    out: list[list[int]] = [[] for _ in range(max(1, min(lanes, len(costs))))]
    load = [0.0] * len(out)
    for g in sorted(range(len(costs)), key=lambda g: -costs[g]):
        lane = load.index(min(load))
        out[lane].append(g)
        load[lane] += costs[g]
    return out


def _stopped(k: int, with_l1: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (mse, l1) a frozen group reports: NaN, which nobody reads (its members are not running)."""
    nan_K = torch.full((k,), math.nan, device=device)
    return nan_K, (nan_K if with_l1 else None)


class _Lane:
    """Groups that step together on one thread with their own Adam (Adam is elementwise: no coupling)."""

    def __init__(self, groups: list[int], saes: Sequence[SAE], alpha_G: list[list[float]], lr: float,
                 sparse_below: float):
        self.groups, self.saes, self.alpha_G = groups, [saes[g] for g in groups], alpha_G
        self.sparse_below = sparse_below
        device = self.saes[0].W_dec_KJN.device
        fused = device.type == "cpu" or device.type == "cuda"
        self.opt = torch.optim.Adam([p for sae in self.saes for p in sae.parameters()], lr=lr, fused=fused)
        self.done: set[int] = set()  # groups whose members have all stopped: no longer stepped

    def stop_group(self, g: int) -> None:
        """Freeze group g: Adam skips parameters without a gradient."""
        self.done.add(g)
        for p in self.saes[self.groups.index(g)].parameters():
            p.grad = None

    def step(self, y_BN: torch.Tensor, with_l1: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        out = [_stopped(sae.k, with_l1, y_BN.device) if g in self.done else
               loss_and_grads(sae, y_BN, self.alpha_G[g], with_l1=with_l1, sparse_below=self.sparse_below)
               for g, sae in zip(self.groups, self.saes, strict=True)]
        live = [sae for g, sae in zip(self.groups, self.saes, strict=True) if g not in self.done]
        for sae in live:
            sae.project_decoder_grad_()
        if live:
            self.opt.step()
        for sae in live:
            sae.normalise_decoder_()
        return out


def train(
    saes: SAE | Sequence[SAE],
    alpha_K: Sequence[float],
    batches: Iterator[torch.Tensor],
    cfg: TrainConfig,
    eval_set: EvalSet,
    sinks: Sequence[Sequence[MetricSink]] = (),
    should_stop: StopFn | None = None,
) -> list[MemberOutcome]:
    """Train every member of ``saes`` for ``cfg.num_samples`` samples; one outcome per member.

    ``saes`` is one SAE or a pack of them (e.g. one per dictionary size), all on one device and fed
    the same batches; members are numbered group by group, and ``alpha_K``, ``sinks`` and the
    member index given to ``should_stop`` follow that numbering. Every member gets exactly the
    updates it would get trained alone on the same batches (Adam is elementwise, the step runs member
    by member), so a packed member equals its solo run to float tolerance.

    On CPU, groups step in ``cfg.lanes`` concurrent lanes (threads), each with one torch thread:
    small SAEs use a core far better one per core than split over cores. Evaluation runs in the lanes too.

    ``sinks[k]`` receives member k's metrics at every evaluation. A member whose loss stops being
    finite is marked diverged, one stopped by ``should_stop`` pruned; either keeps a copy of its
    weights at that moment (``MemberOutcome.weights``) and is no longer reported. Training stops when
    no member is running. Ctrl-C ends training and marks the running members interrupted.
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    members = _members(saes)
    if len(alpha_K) != len(members):
        raise ValueError(f"alpha_K has {len(alpha_K)} entries for {len(members)} members")
    device = saes[0].W_dec_KJN.device
    steps, every = _eval_steps(cfg)
    alpha_G = [[float(alpha_K[m]) for m, mem in enumerate(members) if mem.g == g] for g in range(len(saes))]
    threads = torch.get_num_threads()
    n_lanes = 1 if device.type != "cpu" else (cfg.lanes or threads)
    plan = plan_lanes([sae.k * sae.dict_size for sae in saes], n_lanes)
    sparse_below = (cfg.sparse_below if cfg.sparse_below is not None
                    else auto_sparse_below(device, 1 if len(plan) > 1 else threads))
    lanes = [_Lane(groups, saes, alpha_G, cfg.lr, sparse_below) for groups in plan]
    pool = ThreadPoolExecutor(len(lanes), thread_name_prefix="sae-lane") if len(lanes) > 1 else None
    outcomes = [MemberOutcome() for _ in members]
    running = [True] * len(members)
    alpha_t_K = torch.tensor([float(a) for a in alpha_K], device=device)
    window_mse = torch.zeros(len(members), dtype=torch.float64, device=device)
    window_l1 = torch.zeros(len(members), dtype=torch.float64, device=device)
    window_steps = window_l1_steps = 0
    train_time = 0.0
    bar = tqdm(total=steps * cfg.batch_size, unit="samples", unit_scale=True,
               disable=None if cfg.progress else True, dynamic_ncols=True, leave=False)

    def stop(m: int, status: str, message: str) -> None:
        running[m] = False
        outcomes[m].status, outcomes[m].message = status, message
        g = members[m].g
        outcomes[m].weights = saes[g].member(members[m].k)
        # A stopped member of a group still steps with the others (its result is already kept); a
        # group whose members have all stopped costs nothing more.
        if not any(running[i] for i, mem in enumerate(members) if mem.g == g):
            next(lane for lane in lanes if g in lane.groups).stop_group(g)

    def in_lanes(fn: Callable[[_Lane], list], first_serial: bool = False) -> dict[int, Any]:
        """fn(lane) for every lane, concurrently when there are several; results by group index."""
        if pool is None or first_serial:
            results = [fn(lane) for lane in lanes]
        else:
            results = list(pool.map(fn, lanes))
        return {g: r for lane, rs in zip(lanes, results, strict=True) for g, r in zip(lane.groups, rs, strict=True)}

    if pool is not None:
        torch.set_num_threads(1)  # one core per lane
    try:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            y_BN = next(batches).to(device, non_blocking=True)
            with_l1 = window_steps % L1_EVERY == 0
            # The first step runs lane after lane: it builds each SAE's step buffers outside the threads.
            by_group = in_lanes(functools.partial(_Lane.step, y_BN=y_BN, with_l1=with_l1), first_serial=step == 1)
            mse_K = torch.cat([by_group[g][0] for g in range(len(saes))])
            l1_K = torch.cat([by_group[g][1] for g in range(len(saes))]) if with_l1 else None  # type: ignore[misc]
            finite_K = torch.isfinite(mse_K if l1_K is None else mse_K + l1_K).tolist()
            train_time += time.perf_counter() - t0
            window_mse += torch.nan_to_num(mse_K.double())
            if l1_K is not None:
                window_l1 += torch.nan_to_num(l1_K.double())
                window_l1_steps += 1
            window_steps += 1
            samples = step * cfg.batch_size
            bar.update(cfg.batch_size)

            for m in range(len(members)):
                if running[m] and not finite_K[m]:
                    bad = mse_K[m] + (0.0 if l1_K is None else alpha_t_K[m] * l1_K[m])
                    stop(m, DIVERGED, f"loss became {bad.item()} at sample {samples}")
                    outcomes[m].samples = samples
            if not any(running):
                break

            if step % every == 0 or step == steps:
                stats_G = in_lanes(lambda lane: [eval_stats(sae, eval_set) for sae in lane.saes])
                rows = [row for g, sae in enumerate(saes) for row in evaluate(sae, alpha_G[g], eval_set, stats_G[g])]
                stats = [st for g in range(len(saes)) for st in stats_G[g]]
                for m, row in enumerate(rows):
                    if not running[m]:
                        continue
                    outcomes[m].latent_frequency_J = stats[m].frequency().float().cpu()
                    outcomes[m].latent_mean_J = stats[m].mean_activation().float().cpu()
                    train_loss_m = (window_mse[m] / window_steps
                                    + alpha_t_K[m] * window_l1[m] / max(window_l1_steps, 1)).item()
                    row = {"samples": samples, "train_loss": train_loss_m,
                           **row, "train_time_s": train_time,
                           "samples_per_s": samples / max(train_time, 1e-9)}
                    outcomes[m].final, outcomes[m].samples = row, samples
                    if not math.isfinite(row["loss"]):
                        stop(m, DIVERGED, f"eval loss {row['loss']} at sample {samples}")
                    for sink in sinks[m] if m < len(sinks) else ():
                        sink.log(row, step=samples)
                    if running[m] and should_stop is not None and should_stop(m, samples, row):
                        stop(m, PRUNED, f"stopped at sample {samples}")
                window_mse.zero_()
                window_l1.zero_()
                window_steps = window_l1_steps = 0
                head = next((r for m, r in enumerate(rows) if running[m]), rows[0])
                bar.set_postfix({"loss": f"{head['loss']:.4g}", "L0": f"{head['l0']:.1f}",
                                 **({"mmcs": f"{head['mmcs']:.3f}"} if "mmcs" in head else {})})
                if not any(running):
                    break
    except KeyboardInterrupt:
        for m in range(len(members)):
            if running[m]:
                outcomes[m].status, outcomes[m].message = INTERRUPTED, "interrupted by the user"
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
            torch.set_num_threads(threads)
    return outcomes
