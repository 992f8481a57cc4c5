"""The training loop: K SAE members of one shape in lockstep on one stream of batches.

Reads top to bottom like the algorithm: draw a batch, compute loss and gradients (step.py), keep
decoder atoms at unit norm, Adam, and every ``eval_every`` samples evaluate on the held-out set and
hand a flat dict of metrics to the sinks. Imports no hydra, optuna or wandb.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sae_sweep import metrics
from sae_sweep.config import TrainConfig
from sae_sweep.sae import SAE
from sae_sweep.sinks import MetricSink
from sae_sweep.step import loss_and_grads

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
    chunk: int = 4096  # rows per forward pass, bounds eval memory at (chunk, J) per member


@dataclass
class MemberOutcome:
    status: str = COMPLETED
    samples: int = 0
    final: dict[str, float] = field(default_factory=dict)
    message: str = ""
    latent_frequency_J: torch.Tensor | None = None  # firing frequency per latent at the last evaluation
    latent_mean_J: torch.Tensor | None = None  # mean activation per latent at the last evaluation


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


def train(
    sae: SAE,
    alpha_K: Sequence[float],
    batches: Iterator[torch.Tensor],
    cfg: TrainConfig,
    eval_set: EvalSet,
    sinks: Sequence[Sequence[MetricSink]] = (),
    should_stop: StopFn | None = None,
) -> list[MemberOutcome]:
    """Train every member of ``sae`` for ``cfg.num_samples`` samples; one outcome per member.

    ``sinks[k]`` receives member k's metrics at every evaluation. A member whose loss stops being
    finite is marked diverged and no longer reported; training stops when no member is running.
    Ctrl-C ends training and marks the running members interrupted (the caller records them).
    """
    if len(alpha_K) != sae.k:
        raise ValueError(f"alpha_K has {len(alpha_K)} entries for {sae.k} members")
    device = sae.W_dec_KJN.device
    steps, every = _eval_steps(cfg)
    fused = device.type == "cpu" or device.type == "cuda"
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=fused)
    outcomes = [MemberOutcome() for _ in range(sae.k)]
    running = [True] * sae.k
    alpha_t_K = torch.tensor(list(alpha_K), device=device)
    window_mse = torch.zeros(sae.k, dtype=torch.float64, device=device)
    window_l1 = torch.zeros(sae.k, dtype=torch.float64, device=device)
    window_steps = window_l1_steps = 0
    train_time = 0.0
    bar = tqdm(total=steps * cfg.batch_size, unit="samples", unit_scale=True,
               disable=None if cfg.progress else True, dynamic_ncols=True, leave=False)
    try:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            y_BN = next(batches).to(device, non_blocking=True)
            mse_K, l1_K = loss_and_grads(sae, y_BN, alpha_K, with_l1=window_steps % L1_EVERY == 0)
            finite_K = torch.isfinite(mse_K if l1_K is None else mse_K + l1_K).tolist()
            sae.project_decoder_grad_()
            opt.step()
            sae.normalise_decoder_()
            train_time += time.perf_counter() - t0
            window_mse += torch.nan_to_num(mse_K.double())
            if l1_K is not None:
                window_l1 += torch.nan_to_num(l1_K.double())
                window_l1_steps += 1
            window_steps += 1
            samples = step * cfg.batch_size
            bar.update(cfg.batch_size)

            for k in range(sae.k):
                if running[k] and not finite_K[k]:
                    running[k] = False
                    outcomes[k].status = DIVERGED
                    outcomes[k].samples = samples
                    bad = mse_K[k] + (0.0 if l1_K is None else alpha_t_K[k] * l1_K[k])
                    outcomes[k].message = f"loss became {bad.item()} at sample {samples}"
            if not any(running):
                break

            if step % every == 0 or step == steps:
                stats = eval_stats(sae, eval_set)
                rows = evaluate(sae, alpha_K, eval_set, stats)
                for k, row in enumerate(rows):
                    if not running[k]:
                        continue
                    outcomes[k].latent_frequency_J = stats[k].frequency().float().cpu()
                    outcomes[k].latent_mean_J = stats[k].mean_activation().float().cpu()
                    train_loss_k = (window_mse[k] / window_steps
                                    + alpha_t_K[k] * window_l1[k] / max(window_l1_steps, 1)).item()
                    row = {"samples": samples, "train_loss": train_loss_k,
                           **row, "train_time_s": train_time,
                           "samples_per_s": samples / max(train_time, 1e-9)}
                    outcomes[k].final, outcomes[k].samples = row, samples
                    if not math.isfinite(row["loss"]):
                        running[k] = False
                        outcomes[k].status, outcomes[k].message = DIVERGED, f"eval loss {row['loss']} at sample {samples}"
                    for sink in sinks[k] if k < len(sinks) else ():
                        sink.log(row, step=samples)
                    if running[k] and should_stop is not None and should_stop(k, samples, row):
                        running[k] = False
                        outcomes[k].status = PRUNED
                        outcomes[k].message = f"stopped at sample {samples}"
                window_mse.zero_()
                window_l1.zero_()
                window_steps = window_l1_steps = 0
                head = next((r for k, r in enumerate(rows) if running[k]), rows[0])
                bar.set_postfix({"loss": f"{head['loss']:.4g}", "L0": f"{head['l0']:.1f}",
                                 **({"mmcs": f"{head['mmcs']:.3f}"} if "mmcs" in head else {})})
                if not any(running):
                    break
    except KeyboardInterrupt:
        for k in range(sae.k):
            if running[k]:
                outcomes[k].status, outcomes[k].message = INTERRUPTED, "interrupted by the user"
    finally:
        bar.close()
    return outcomes
