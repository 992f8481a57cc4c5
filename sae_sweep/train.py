"""The training loop: K SAE members of one shape in lockstep on one stream of batches.

Reads top to bottom like the algorithm: draw a batch, compute loss and gradients (step.py), keep
decoder atoms at unit norm, Adam, and every ``eval_every`` samples evaluate on the held-out set and
hand a flat dict of metrics to the sinks. Which lane steps which group, and the batch feed they
share: lanes.py; a member's state in a checkpoint and its tensors: checkpoint.py. Imports no hydra,
optuna or wandb.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_sweep import metrics
from sae_sweep.adam import Adam
from sae_sweep.checkpoint import (
    MemberState,
    load_member_,
    member_tensors,
    resume_point,
    sae_from,
    sae_tensors,
)
from sae_sweep.config import TrainConfig
from sae_sweep.convergence import ConvergenceRule, ConvergenceTracker
from sae_sweep.lanes import Lanes, StepFn
from sae_sweep.record import COMPLETED, DIVERGED, FAILED, INTERRUPTED, PRUNED  # noqa: F401  (statuses: record.py)
from sae_sweep.sae import SAE, copy_member_tensors_
from sae_sweep.sinks import MetricSink
from sae_sweep.step import StepBuffers, auto_sparse_below, loss_and_grads, loss_and_grads_stacked
from sae_sweep.threads import CoreShare, policy_on

log = logging.getLogger(__name__)

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
    weights: SAE | None = None  # a member stopped early (diverged, pruned, converged): its weights then
    converged: bool = False  # the convergence rule held at the last evaluation (convergence.py)


# on_checkpoint(step, states): every member's state after ``step`` steps (run.py writes them to disk).
CheckpointFn = Callable[[int, list[MemberState]], None]


@torch.no_grad()
def eval_stats(sae: SAE, eval_set: EvalSet) -> list[metrics.CodeStats]:
    """Every member's CodeStats over the held-out set."""
    device = sae.W_dec_KJN.device
    stats = [metrics.CodeStats(sae.n, j, device) for j in sae.sizes_K]  # a padded member: its own J only
    for start in range(0, eval_set.y_BN.shape[0], eval_set.chunk):
        y_BN = eval_set.y_BN[start : start + eval_set.chunk].to(device)
        z_KBN, c_KBJ = sae(y_BN)
        for k, j in enumerate(sae.sizes_K):
            stats[k].update(y_BN, z_KBN[k], c_KBJ[k, :, :j])
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
    """Where global member m lives: group g of the pack, member k of that group's SAE (k = -1 once
    it has left a stacked group)."""

    g: int
    k: int


def _members(saes: Sequence[SAE]) -> list[_Member]:
    return [_Member(g, k) for g, sae in enumerate(saes) for k in range(sae.k)]


class _Group:
    """One SAE of the pack (its members stacked) with its own Adam (Adam is elementwise: no coupling).

    ``stacked``: the group steps as one batched computation (``loss_and_grads_stacked``; its members
    may differ in J and stream), else member by member (``loss_and_grads``, one stream).
    Any lane may take its next step (lanes.py), one lane at a time, so its steps stay in order.
    The group owns its step's buffers (``StepBuffers``); a group rebuilt by :meth:`keep` gets fresh ones.
    """

    def __init__(self, sae: SAE, alpha_K: list[float], member_ids: list[int], lr: float,
                 sparse_below: float, stream_K: list[int], stacked: bool):
        self.sae, self.alpha_K, self.member_ids = sae, alpha_K, member_ids
        self.sparse_below, self.stream_K, self.stacked = sparse_below, stream_K, stacked
        if not stacked and (sae.padded or len(set(stream_K)) > 1):
            raise ValueError("a group of members with different J or batch streams must be stacked")
        self.lr = lr
        self.opt = self._adam(sae)
        self.buffers = StepBuffers()

    def _adam(self, sae: SAE) -> Adam:
        return Adam(sae.parameters(), lr=self.lr)

    def step(self, y_SBN: torch.Tensor, with_l1: bool, running: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimiser step; (mse_K, l1_K). Members not ``running`` (by global member number) are
        skipped (per-member groups) or computed and discarded (stacked groups, until :meth:`keep`)."""
        if self.stacked:
            out = loss_and_grads_stacked(self.sae, y_SBN, self.stream_K, self.alpha_K, with_l1=with_l1,
                                         buffers=self.buffers)
        else:
            skip = {k for k, m in enumerate(self.member_ids) if not running[m]}
            out = loss_and_grads(self.sae, y_SBN[self.stream_K[0]], self.alpha_K, with_l1=with_l1,
                                 sparse_below=self.sparse_below, skip=skip, buffers=self.buffers)
        self.sae.project_decoder_grad_()
        self.opt.step()
        self.sae.normalise_decoder_()
        return out

    @torch.no_grad()
    def keep(self, ks: list[int]) -> None:
        """Rebuild the group from its members ``ks`` alone (stopped ones leave the stacked computation):
        parameters and Adam's moments copied exactly, padded to the kept members' largest J."""
        old, old_opt = self.sae, self.opt
        new = SAE.stack([old.member(k) for k in ks], pad=True)
        self.opt = self._adam(new)
        for p_old, p_new in zip(old.parameters(), new.parameters(), strict=True):
            state = old_opt.state.get(p_old)
            if not state:
                continue
            moments = {key: torch.zeros_like(p_new) for key, v in state.items() if v.shape == p_old.shape}
            copy_member_tensors_(moments, {key: state[key] for key in moments}, ks)
            self.opt.state[p_new] = {key: (moments[key] if key in moments else v.clone()) for key, v in state.items()}
        self.sae, self.buffers = new, StepBuffers()
        self.alpha_K = [self.alpha_K[k] for k in ks]
        self.member_ids = [self.member_ids[k] for k in ks]
        self.stream_K = [self.stream_K[k] for k in ks]


def _step_group(groups: Sequence[_Group], state: _State, window_start: int, g: int, step: int,
                y_SBN: torch.Tensor) -> None:
    """Group g's step ``step`` (in whichever lane runs it), its losses into the members' windows.

    The L1 term is measured every L1_EVERY steps counted from ``window_start`` (the first step after
    the last evaluation).
    """
    if y_SBN.dim() == 2:  # one stream
        y_SBN = y_SBN[None]
    with_l1 = (step - window_start) % L1_EVERY == 0
    state.account(groups[g], step, groups[g].step(y_SBN, with_l1, state.running), with_l1)


@dataclass
class _State:
    """What the lanes and the evaluation share: each member's running flag, outcome and loss window."""

    members: list[_Member]
    outcomes: list[MemberOutcome]
    groups: list[_Group]
    alpha_K: list[float]
    batch_size: int
    lanes: Lanes
    running: list[bool] = field(init=False)
    window_mse: list[float] = field(init=False)  # sums since the last evaluation
    window_l1: list[float] = field(init=False)
    window_steps: list[int] = field(init=False)
    window_l1_steps: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.running = [True] * len(self.members)
        self.reset_windows()
        self.lock = threading.Lock()

    def account(self, group: _Group, step: int, losses: tuple[torch.Tensor, torch.Tensor | None], with_l1: bool) -> None:
        """Add the group's losses of ``step`` to its members' windows; stop those whose loss is not finite."""
        mse_K, l1_K = losses
        mse = mse_K.double().tolist()  # one sync per group step
        l1 = l1_K.double().tolist() if with_l1 and l1_K is not None else None
        for k, m in enumerate(group.member_ids):
            if not self.running[m]:
                continue
            bad = mse[k] + (0.0 if l1 is None else self.alpha_K[m] * l1[k])
            if not math.isfinite(bad):
                self.stop(m, DIVERGED, f"loss became {bad} at sample {step * self.batch_size}")
                self.outcomes[m].samples = step * self.batch_size
                continue
            self.window_mse[m] += mse[k]
            self.window_steps[m] += 1
            if l1 is not None:
                self.window_l1[m] += l1[k]
                self.window_l1_steps[m] += 1

    def stop(self, m: int, status: str, message: str) -> None:
        """Stop member m, keeping its weights; a group whose members have all stopped is retired."""
        with self.lock:
            self.running[m] = False
            self.outcomes[m].status, self.outcomes[m].message = status, message
            g = self.members[m].g
            self.outcomes[m].weights = self.groups[g].sae.member(self.members[m].k)
            # A stopped member's step is skipped from now on (its result is already kept; Adam only
            # decays its moments); a group whose members have all stopped takes no more steps.
            if not any(self.running[i] for i, mem in enumerate(self.members) if mem.g == g):
                self.lanes.retire(g)

    def train_loss(self, m: int) -> float:
        mse = self.window_mse[m] / max(self.window_steps[m], 1)
        return mse + self.alpha_K[m] * self.window_l1[m] / max(self.window_l1_steps[m], 1)

    def reset_windows(self) -> None:
        m = len(self.members)
        self.window_mse, self.window_l1, self.window_steps, self.window_l1_steps = [0.0] * m, [0.0] * m, [0] * m, [0] * m


def _drop_stopped(groups: Sequence[_Group], members: list[_Member], running: Sequence[bool]) -> None:
    """Stopped members leave their stacked group (a retired group stays as it is)."""
    for group in groups:
        ks = [k for k, m in enumerate(group.member_ids) if running[m]]
        if group.stacked and ks and len(ks) < group.sae.k:
            for k, m in enumerate(group.member_ids):
                if k not in ks:
                    members[m].k = -1
            group.keep(ks)
            for k, m in enumerate(group.member_ids):
                members[m].k = k


@torch.no_grad()
def _snapshot(m: int, group: _Group, mem: _Member, state: _State, tracker: ConvergenceTracker,
              pack: dict[str, Any]) -> MemberState:
    """Member m's state now (between steps), copied to the CPU."""
    out, tensors = state.outcomes[m], {}
    if state.running[m]:
        tensors.update(member_tensors(group.sae, group.opt, mem.k))
    elif out.weights is not None:
        tensors.update(sae_tensors(out.weights, "stopped"))
    if out.latent_frequency_J is not None:
        tensors["latent_frequency"], tensors["latent_mean"] = out.latent_frequency_J.clone(), out.latent_mean_J.clone()
    prev = tracker.prev[m]
    if prev is not None:
        tensors["conv_atoms"] = prev[2].cpu().clone()
    info = {**pack, "running": state.running[m], "status": out.status, "message": out.message,
            "samples": out.samples, "final": out.final, "converged": out.converged,
            "window": [state.window_mse[m], state.window_l1[m], state.window_steps[m], state.window_l1_steps[m]],
            "conv": None if prev is None else {"samples": prev[0], "loss": prev[1], "streak": tracker.streak[m]},
            "dict_size": group.sae.sizes_K[mem.k] if mem.k >= 0 else None}
    return MemberState(tensors, info)


@torch.no_grad()
def _restore(resume: Sequence[MemberState], groups: list[_Group], members: list[_Member], state: _State,
             tracker: ConvergenceTracker) -> None:
    """Put every member back as ``resume`` had it (one state per member, all of one step: checkpoint.resume_point):
    parameters and Adam's state into its group, its outcome, loss window and convergence streak; stopped
    members leave their stacked groups as at the evaluation that stopped them. Raises ValueError when a
    state does not fit the member."""
    for m, (r, mem) in enumerate(zip(resume, members, strict=True)):
        group, t, info = groups[mem.g], r.tensors, r.info
        j = group.sae.sizes_K[mem.k]
        out = state.outcomes[m]
        out.status, out.message, out.samples = str(info["status"]), str(info["message"]), int(info["samples"])
        out.final, out.converged = dict(info["final"]), bool(info["converged"])
        if "latent_frequency" in t:
            out.latent_frequency_J, out.latent_mean_J = t["latent_frequency"], t["latent_mean"]
        state.running[m] = bool(info["running"])
        mse, l1, n_steps, n_l1 = info["window"]
        state.window_mse[m], state.window_l1[m] = float(mse), float(l1)
        state.window_steps[m], state.window_l1_steps[m] = int(n_steps), int(n_l1)
        conv = info["conv"]
        if conv is not None:
            tracker.prev[m] = (int(conv["samples"]), float(conv["loss"]), t["conv_atoms"].to(group.sae.W_dec_KJN.device))
            tracker.streak[m] = int(conv["streak"])
        if state.running[m]:
            load_member_(group.sae, group.opt, mem.k, t, j)
        else:
            out.weights = sae_from(t, "stopped", group.sae, j)
    for g, group in enumerate(groups):
        if not any(state.running[m] for m in group.member_ids):
            state.lanes.retire(g)
    _drop_stopped(groups, members, state.running)


def _sharing(step: StepFn, share: CoreShare) -> StepFn:
    def shared(g: int, s: int, y: torch.Tensor) -> None:
        share.tick()
        step(g, s, y)
    return shared


def train(
    saes: SAE | Sequence[SAE],
    alpha_K: Sequence[float],
    batches: Iterator[torch.Tensor],
    cfg: TrainConfig,
    eval_set: EvalSet,
    sinks: Sequence[Sequence[MetricSink]] = (),
    should_stop: StopFn | None = None,
    *,
    streams: Sequence[int] | None = None,
    stacked: Sequence[bool] | None = None,
    on_checkpoint: CheckpointFn | None = None,
    resume: Sequence[MemberState] | None = None,
) -> list[MemberOutcome]:
    """Train every member of ``saes`` for ``cfg.num_samples`` samples; one outcome per member.

    ``saes`` is one SAE or a pack of them (e.g. one per dictionary size), all on one device and fed
    the same batches; members are numbered group by group, and ``alpha_K``, ``sinks`` and the
    member index given to ``should_stop`` follow that numbering. Every member gets exactly the
    updates it would get trained alone on the same batches (Adam is elementwise, the step runs member
    by member, or as batched GEMMs that compute each member's own), so a packed member equals its
    solo run to float tolerance.

    ``batches`` yields (B, N) batches of one stream, or (S, B, N) with one batch per stream, member m
    reading stream ``streams[m]`` (members of different seeds each see their own stream). Group g
    steps stacked (one batched computation; its members may differ in J and stream: ``SAE.stack``
    with ``pad=True``) when ``stacked[g]``, always when its SAE is padded or mixes streams, else
    member by member (the default). A stacked group's stopped members leave it at the evaluation
    that stopped them (the group is rebuilt without them, so it gets cheaper as members converge).

    On CPU, groups step in ``cfg.lanes`` concurrent lanes (threads, lanes.py), each with one torch
    thread: a free lane takes the group furthest behind, one step at a time; every group reads the
    same batches from a shared feed; lanes meet only at evaluations, which run in the lanes too.

    ``sinks[k]`` receives member k's metrics at every evaluation. A member whose loss stops being
    finite is marked diverged, one stopped by ``should_stop`` pruned; either keeps a copy of its
    weights at that moment (``MemberOutcome.weights``) and is no longer reported. Training stops when
    no member is running. Ctrl-C ends training and marks the running members interrupted.

    Every ``cfg.checkpoint_every`` samples (rounded up to whole steps; before the last step) the
    segment ends there and ``on_checkpoint(step, states)`` gets every member's :class:`MemberState`.
    ``resume`` (one state per member, all of one step, e.g. read back from those checkpoints) continues
    from that step: ``batches`` must then yield the batches after it. Nothing in a step depends on
    which lane ran it or on what the step's buffers held, so the resumed run takes exactly the steps
    the uninterrupted one would and ends with the same weights, bit for bit (on one device, thread
    count and lane count; tests/e2e/test_checkpoint.py).
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    members = _members(saes)
    if len(alpha_K) != len(members):
        raise ValueError(f"alpha_K has {len(alpha_K)} entries for {len(members)} members")
    device = saes[0].W_dec_KJN.device
    steps, every = _eval_steps(cfg)
    alpha_G = [[float(alpha_K[m]) for m, mem in enumerate(members) if mem.g == g] for g in range(len(saes))]
    member_ids = [[m for m, mem in enumerate(members) if mem.g == g] for g in range(len(saes))]
    stream_M = [0] * len(members) if streams is None else [int(s) for s in streams]
    if len(stream_M) != len(members):
        raise ValueError(f"streams has {len(stream_M)} entries for {len(members)} members")
    stacked_G = [bool(stacked[g]) if stacked is not None else False for g in range(len(saes))]
    stacked_G = [st or sae.padded or len({stream_M[m] for m in member_ids[g]}) > 1
                 for g, (st, sae) in enumerate(zip(stacked_G, saes, strict=True))]
    threads = torch.get_num_threads()
    n_lanes = 1 if device.type != "cpu" else max(1, min(cfg.lanes or threads, len(saes)))
    sparse_below = (cfg.sparse_below if cfg.sparse_below is not None
                    else auto_sparse_below(device, 1 if n_lanes > 1 else threads))
    groups = [_Group(sae, alpha_G[g], member_ids[g], cfg.lr, sparse_below, [stream_M[m] for m in member_ids[g]],
                     stacked_G[g]) for g, sae in enumerate(saes)]
    outcomes = [MemberOutcome() for _ in members]
    tracker = ConvergenceTracker(ConvergenceRule(cfg.converge_loss_rtol, cfg.converge_drift, cfg.converge_patience),
                                 len(members))
    bar = tqdm(total=steps * cfg.batch_size, unit="samples", unit_scale=True,
               disable=None if cfg.progress else True, dynamic_ncols=True, leave=False)
    start, window_start, train_time = resume_point(resume, len(members)) if resume is not None else (0, 1, 0.0)
    lanes = Lanes(n_lanes, [sae.k * sae.dict_size for sae in saes], batches, device,
                  on_draw=lambda: bar.update(cfg.batch_size), drawn=start)
    state = _State(members, outcomes, groups, [float(a) for a in alpha_K], cfg.batch_size, lanes)
    if resume is not None:
        _restore(resume, groups, members, state, tracker)
        bar.update(start * cfg.batch_size)
    ckpt_every = math.ceil(cfg.checkpoint_every / cfg.batch_size) if on_checkpoint and cfg.checkpoint_every else 0
    # Alone on the cores, a run keeps its threads; beside a busy process, one (threads.py).
    share = (CoreShare(threads) if device.type == "cpu" and n_lanes == 1 and threads > 1 and not cfg.threads
             and policy_on() else None)

    def checkpoint(step: int, window_start: int, train_time: float) -> None:
        assert on_checkpoint is not None
        pack = {"step": step, "window_start": window_start, "train_time": train_time}
        on_checkpoint(step, [_snapshot(m, groups[mem.g], mem, state, tracker, pack) for m, mem in enumerate(members)])

    with lanes:
        try:
            first = start + 1
            while first <= steps and any(state.running):
                eval_at = min(steps, ((first - 1) // every + 1) * every)  # the next evaluation step
                last = min(eval_at, ((first - 1) // ckpt_every + 1) * ckpt_every) if ckpt_every else eval_at
                step = functools.partial(_step_group, groups, state, window_start)
                if share is not None:
                    step = _sharing(step, share)
                t0 = time.perf_counter()
                if first == start + 1:  # this process's first step in this thread: it builds each SAE's step buffers outside the lanes
                    lanes.segment(first, first, step, concurrent=False)
                    first += 1
                if first <= last:
                    lanes.segment(first, last, step)
                train_time += time.perf_counter() - t0
                samples = last * cfg.batch_size
                first = last + 1
                if not any(state.running):
                    break
                if last < eval_at:  # a checkpoint inside the evaluation window
                    checkpoint(last, window_start, train_time)
                    continue

                live = [g for g, group in enumerate(groups) if any(state.running[m] for m in group.member_ids)]
                stats_G = dict(zip(live, lanes.run([functools.partial(eval_stats, groups[g].sae, eval_set) for g in live]),
                                   strict=True))
                rows: dict[int, dict[str, float]] = {}
                for g in live:
                    group = groups[g]
                    for k, row in enumerate(evaluate(group.sae, group.alpha_K, eval_set, stats_G[g])):
                        m = group.member_ids[k]
                        if not state.running[m]:
                            continue
                        st = stats_G[g][k]
                        outcomes[m].latent_frequency_J = st.frequency().float().cpu()
                        outcomes[m].latent_mean_J = st.mean_activation().float().cpu()
                        conv = tracker.update(m, samples, row["loss"], group.sae.dictionary(k), st.frequency())
                        outcomes[m].converged = bool(conv.pop("converged"))
                        row = {"samples": samples, "train_loss": state.train_loss(m),
                               **row, **conv, "train_time_s": train_time,
                               "samples_per_s": samples / max(train_time, 1e-9)}
                        rows[m] = row
                        outcomes[m].final, outcomes[m].samples = row, samples
                        if not math.isfinite(row["loss"]):
                            state.stop(m, DIVERGED, f"eval loss {row['loss']} at sample {samples}")
                        for sink in sinks[m] if m < len(sinks) else ():
                            sink.log(row, step=samples)
                        if state.running[m] and should_stop is not None and should_stop(m, samples, row):
                            state.stop(m, PRUNED, f"stopped at sample {samples}")
                        if state.running[m] and cfg.converge and outcomes[m].converged and last < steps:
                            state.stop(m, COMPLETED, f"converged at sample {samples}")
                _drop_stopped(groups, members, state.running)
                state.reset_windows()
                window_start = last + 1
                head = next((rows[m] for m in sorted(rows) if state.running[m]), next(iter(rows.values()), None))
                if head is not None:
                    bar.set_postfix({"loss": f"{head['loss']:.4g}", "L0": f"{head['l0']:.1f}",
                                     **({"mmcs": f"{head['mmcs']:.3f}"} if "mmcs" in head else {})})
                if ckpt_every and last % ckpt_every == 0 and last < steps and any(state.running):
                    checkpoint(last, window_start, train_time)
        except KeyboardInterrupt:
            lanes.stop()
            for m in range(len(members)):
                if state.running[m]:
                    outcomes[m].status, outcomes[m].message = INTERRUPTED, "interrupted by the user"
        finally:
            bar.close()
            if share is not None:
                share.close()
                log.info("%.1f s of %.1f s on one thread beside another busy process (threads.py)",
                         share.shared_s, train_time)
    for m, mem in enumerate(members):  # completed or interrupted: the group's final weights
        if outcomes[m].weights is None and mem.k >= 0:
            outcomes[m].weights = groups[mem.g].sae.member(mem.k)
    return outcomes
