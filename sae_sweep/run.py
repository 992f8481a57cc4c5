"""One run, end to end: build data and SAE from a RunConfig, train, and write the run dir.

Run dir contents: config.yaml (resolved), metrics.jsonl (a row per evaluation), summary.json
(final metrics, status, timings, versions), sae.safetensors + cfg.json, saelens/ (the same SAE for
``sae_lens.SAE.load_from_disk``, on raw activations: export.py), latents.safetensors (each
latent's firing frequency and mean activation on the eval set at the last evaluation),
ground_truth.safetensors (toy data only: real activations have none), and wandb/ when W&B is on. Imports no hydra or optuna; wandb only through sinks.py.

While it trains, a run also keeps checkpoint.safetensors (and checkpoint.prev.safetensors) every
``train.checkpoint_every`` samples (checkpoint.py). A run started in a run dir that holds one of the same
config continues from it instead of starting over (a solo run, or every member of a pack from the
latest step they all have), and ends as it would have without the break; the checkpoints are deleted
when the run ends, unless ``train.keep_checkpoint`` (an interrupted or failed run keeps them: a re-run
resumes it; the Optuna sweeper removes those of a FAIL trial, which nothing re-runs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from sae_sweep import checkpoint, packing
from sae_sweep.checkpoint import MemberState, check_member_state
from sae_sweep.config import SUMMARY_METRICS, RunConfig, loss_normalisation, trainer_alpha
from sae_sweep.data.activations import ActivationShards
from sae_sweep.data.toy import ToyFeatures, derive_seed
from sae_sweep.export import SAELENS_DIR, run_info, write_saelens
from sae_sweep.kill import kill_point
from sae_sweep.lanes import stack_streams
from sae_sweep.record import (
    COMPLETED,
    CONFIG_FILE,
    DIVERGED,
    FAILED,
    GROUND_TRUTH_FILE,
    INTERRUPTED,
    LATENTS_FILE,
    LOGGING_KEYS,
    METRICS_FILE,
    PRUNED,
    SAE_CFG_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    file_digest,
    single_line,
    write_json_atomic,
)
from sae_sweep.sae import SAE
from sae_sweep.sinks import JsonlSink, MetricSink, WandbSink, read_rows
from sae_sweep.threads import set_torch_threads, single_run_threads
from sae_sweep.train import EvalSet, MemberOutcome, StopFn, train

log = logging.getLogger(__name__)

STREAM_SAE_INIT = 3
RECORDED_FILES = (WEIGHTS_FILE, SAE_CFG_FILE, LATENTS_FILE, GROUND_TRUTH_FILE)


class RunFailed(RuntimeError):
    """The run ended without completing (diverged, pruned or raised); summary.json says why."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but torch sees no CUDA device")
    return torch.device(name)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "hydra-core", "omegaconf", "optuna", "wandb", "pandas", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def batch_seed(cfg: RunConfig) -> int:
    """The seed of the run's training batch stream."""
    return cfg.seed if cfg.train.batch_seed is None else cfg.train.batch_seed


def pack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train as one pack: same data, same schedule and device.

    alpha, dict_size, seed and batch stream, ``sae.l1_norm``, whether weights are saved, and how a run is
    named and logged (``record.LOGGING_KEYS``) may differ (each member reads its own stream); everything
    that changes the data or the optimiser may not, nor how the pack is scheduled (``record.SCHEDULING_KEYS``:
    one pack runs them once).
    """
    train_cfg = dataclasses.asdict(cfg.train)
    per_member = [k.removeprefix("train.") for k in LOGGING_KEYS if k.startswith("train.")]
    for k in (*per_member, "save_weights", "batch_seed"):
        train_cfg.pop(k)
    return json.dumps({"data": dataclasses.asdict(cfg.data), "train": train_cfg,
                       "decoder_bias": cfg.sae.decoder_bias}, sort_keys=True, default=str)


@dataclass
class Job:
    """One run of a pack: its config, run dir and hooks (as the keyword arguments of :func:`run`)."""

    cfg: RunConfig
    run_dir: Path
    run_name: str | None = None
    group: str | None = None
    should_stop: StopFn | None = None
    extra_sinks: Callable[[], list[MetricSink]] | None = None
    trial: int | None = None
    """The Optuna trial number the run stands for (in summary.json and the W&B run's config and summary)."""


@dataclass
class _Prepared:
    job: Job
    wall0: float
    sae: SAE
    sinks: list[MetricSink]
    summary: dict[str, Any]
    setup_s: float = 0.0
    input_mean_N: torch.Tensor | None = None  # the data's normalisation y -> (y - mean) / scale, for the export
    input_scale: float = 1.0


def _load_data(cfg: RunConfig, device: torch.device) -> tuple[ToyFeatures | ActivationShards, EvalSet]:
    if cfg.data.kind == "activations":
        shards = ActivationShards(cfg.data)
        return shards, EvalSet(shards.eval_set().to(device), None)
    toy = ToyFeatures(cfg.data)
    return toy, EvalSet(toy.eval_set().to(device), toy.ground_truth.features_HN.to(device))


def _data_fields(cfg: RunConfig, data: ToyFeatures | ActivationShards) -> dict[str, Any]:
    if isinstance(data, ActivationShards):
        return {"n": cfg.data.n, "h": None, "data_seed": None, "data_path": cfg.data.path, "data_rows": data.rows}
    return {"n": cfg.data.n, "h": cfg.data.h, "data_seed": cfg.data.seed}


def _prepare(job: Job, data: ToyFeatures | ActivationShards, device: torch.device, wall0: float,
             rows: list[dict[str, Any]] | None = None) -> _Prepared:
    """Write the run's config, build its SAE (seeded by the run seed) and open its sinks.

    ``rows``: the metrics rows of the run this one resumes (kept in metrics.jsonl, replayed to W&B)."""
    cfg, run_dir = job.cfg, Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_dict = dataclasses.asdict(cfg)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    if isinstance(data, ToyFeatures):
        save_file(data.ground_truth.tensors(), str(run_dir / GROUND_TRUTH_FILE))
    init = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_SAE_INIT))
    sae = SAE(cfg.data.n, cfg.dict_size, 1, decoder_bias=cfg.sae.decoder_bias,
              init_scale=cfg.sae.init_scale, generator=init, device=device)
    run_name = job.run_name or cfg.name
    summary: dict[str, Any] = {
        "status": FAILED, "message": "", "name": run_name, "group": job.group, "trial": job.trial,
        "alpha": cfg.alpha, "dict_size": cfg.dict_size, "seed": cfg.seed, "batch_seed": batch_seed(cfg),
        **_data_fields(cfg, data),
        "l1_norm": cfg.sae.l1_norm, "loss_normalisation": loss_normalisation(cfg),
        "trainer_alpha": trainer_alpha(cfg), "eval_size": cfg.data.eval_size,
        "device": str(device), "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    prepared = _Prepared(job, wall0, sae, [JsonlSink(run_dir / METRICS_FILE, keep=rows)], summary)
    if isinstance(data, ActivationShards) and (cfg.data.center or data.scale != 1.0):
        prepared.input_mean_N, prepared.input_scale = torch.from_numpy(data.mean_N), data.scale
    if cfg.logger.wandb.mode != "disabled":
        prepared.sinks.append(WandbSink(run_dir, cfg_dict, name=run_name, group=job.group, trial=job.trial))
        summary["wandb_run_id"] = prepared.sinks[-1].run.id
        for row in rows or ():  # a resumed run's W&B run is a new one: it gets the history so far first
            prepared.sinks[-1].log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
    if job.extra_sinks is not None:
        prepared.sinks.extend(job.extra_sinks())
    return prepared


def _finish(p: _Prepared, outcome: MemberOutcome | None, error: BaseException | None = None) -> dict[str, Any]:
    """Write summary.json, the weights and latent statistics; finish every sink. Returns the summary."""
    cfg, run_dir, summary = p.job.cfg, Path(p.job.run_dir), p.summary
    if outcome is not None:
        summary["status"], summary["message"] = outcome.status, outcome.message
    if error is not None:
        summary["status"], summary["message"] = FAILED, f"{type(error).__name__}: {error}"
    final = outcome.final if outcome is not None else {}
    summary.update({k: _finite_or_none(final.get(k)) for k in SUMMARY_METRICS})
    summary["train_loss"] = _finite_or_none(final.get("train_loss"))  # the last logged training-batch loss
    # The convergence rule's verdict and the last window's two numbers (convergence.py).
    summary.update({"converged": outcome.converged if outcome is not None else False,
                    "loss_change": _finite_or_none(final.get("loss_change")),
                    "atom_drift": _finite_or_none(final.get("atom_drift"))})
    summary.update({
        "samples": outcome.samples if outcome is not None else 0,
        "train_time_s": final.get("train_time_s"),
        "samples_per_s": final.get("samples_per_s"),
        "setup_time_s": p.setup_s,
        "wall_time_s": time.perf_counter() - p.wall0,
        "versions": library_versions(),
    })
    if cfg.train.save_weights and outcome is not None:
        weights = outcome.weights if outcome.weights is not None else p.sae
        weights.save(run_dir, 0, extra={"alpha": cfg.alpha, "l1_norm": cfg.sae.l1_norm,
                                        "loss_normalisation": loss_normalisation(cfg)})
        # The same SAE as SAELens loads it (export.py), acting on raw activations.
        write_saelens(run_dir / SAELENS_DIR, weights, mean_N=p.input_mean_N, scale=p.input_scale,
                      info=run_info(run_dir))
    if outcome is not None and outcome.latent_frequency_J is not None:
        save_file({"frequency": outcome.latent_frequency_J, "mean_activation": outcome.latent_mean_J},
                  str(run_dir / LATENTS_FILE))
    # The digests let resume and the analysis tell a whole record from a damaged one (record.py).
    summary["files"] = {name: file_digest(run_dir / name) for name in RECORDED_FILES if (run_dir / name).is_file()}
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    kill_point("summary_written")  # a finished record with its checkpoints still there: resume removes them
    if summary["status"] in (COMPLETED, DIVERGED, PRUNED) and not cfg.train.keep_checkpoint:
        checkpoint.discard(run_dir)  # the run has ended: nothing to resume (interrupted or failed: kept)
    for sink in p.sinks:
        sink.finish(summary)
    return summary


def run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    run_name: str | None = None,
    group: str | None = None,
    should_stop: StopFn | None = None,
    extra_sinks: Callable[[], list[MetricSink]] | None = None,
    trial: int | None = None,
) -> dict[str, Any]:
    """Train one SAE as configured and record it in ``run_dir``; returns the summary dict.

    The summary (also in summary.json) has ``status`` completed, diverged, pruned, interrupted or
    failed; sinks are finished in every case. Ctrl-C is re-raised after the record is written.
    """
    job = Job(cfg, Path(run_dir), run_name, group, should_stop, extra_sinks, trial)
    return run_packed([job])[0]


def run_packed(jobs: list[Job]) -> list[dict[str, Any]]:
    """Train several runs as one pack; one summary per job, in order.

    Every job must have the same :func:`pack_key`. Each distinct batch seed is one stream, drawn once
    per step for every member that reads it. Members are grouped by ``packing.plan``: small SAEs
    into stacked groups (padded to a bucket's largest J, any mix of alpha, seed and stream, one
    batched computation each), large ones by dictionary size and stream (each split in one group
    per lane), each group one K-member SAE. Every member is initialised from its own run seed and
    sees exactly the batches its solo run would, so its record equals the solo run's to float
    tolerance. Each job keeps its own run dir, sinks and status (a diverged or pruned member stops
    alone). Ctrl-C is re-raised after every record is written.
    """
    if not jobs:
        return []
    wall0 = time.perf_counter()
    cfg = jobs[0].cfg
    keys = {pack_key(j.cfg) for j in jobs}
    if len(keys) > 1:
        raise ValueError("run_packed: jobs differ in data, training schedule or device; "
                         "only alpha, dict_size, seed, train.batch_seed, sae.l1_norm and the logger may differ")
    threads = (single_run_threads(cfg.train.threads, batch_size=cfg.train.batch_size, n=cfg.data.n,
                                  dict_size=cfg.dict_size) if len(jobs) == 1 else cfg.train.threads or None)
    set_torch_threads(threads)  # None: as the process has it (torch's default, or a launcher's; threads.py)
    device = resolve_device(cfg.train.device)
    data, eval_set = _load_data(cfg, device)
    seeds = sorted({batch_seed(j.cfg) for j in jobs})
    stream = [seeds.index(batch_seed(j.cfg)) for j in jobs]
    keys = [checkpoint.config_key(j.cfg) for j in jobs]
    resumed = _resume(jobs, keys, data, seeds, stream)
    streams = resumed[2] if resumed else [data.batches(cfg.train.batch_size, s) for s in seeds]
    prepared: list[_Prepared] = []
    outcomes: list[MemberOutcome | None] = [None] * len(jobs)
    error: BaseException | None = None
    try:
        for i, j in enumerate(jobs):  # one by one, so a failure still finishes the sinks already opened
            prepared.append(_prepare(j, data, device, wall0, resumed[1][i] if resumed else None))
        setup_s = time.perf_counter() - wall0
        for p in prepared:
            p.setup_s = setup_s
        lanes = 1 if device.type != "cpu" else (cfg.train.lanes or torch.get_num_threads())
        parts = packing.plan([j.cfg.dict_size for j in jobs], stream, cfg.data.n, cfg.train.batch_size, lanes,
                             device.type, cfg.train.stacked)
        packs = [SAE.stack([prepared[i].sae for i in part.members], pad=part.stacked) for part in parts]
        order = [i for part in parts for i in part.members]  # train() numbers members pack by pack
        hooks = [jobs[i].should_stop for i in order]

        def should_stop(m: int, samples: int, row: dict[str, float]) -> bool:
            hook = hooks[m]
            return hook is not None and hook(0, samples, row)

        batches = streams[0] if len(streams) == 1 else stack_streams(streams)

        def on_checkpoint(step: int, states: list[MemberState]) -> None:
            rng = torch.get_rng_state()
            checkpoint.write_round([
                (jobs[i].run_dir, {**st.tensors, "rng.torch": rng},
                 {"key": keys[i], "step": step, "samples": step * cfg.train.batch_size, "member": st.info,
                  "metrics_rows": prepared[i].sinks[0].rows, "stream": streams[stream[i]].position()})
                for i, st in zip(order, states, strict=True)])

        if resumed:
            torch.set_rng_state(resumed[0][0].tensors["rng.torch"])
            log.info(f"resuming from the checkpoint at sample {resumed[0][0].info['samples']}: "
                     f"{', '.join(str(j.run_dir) for j in jobs)}")
        results = train(packs, [trainer_alpha(jobs[i].cfg) for i in order], batches, cfg.train, eval_set,
                        [prepared[i].sinks for i in order], should_stop, streams=[stream[i] for i in order],
                        stacked=[part.stacked for part in parts], on_checkpoint=on_checkpoint,
                        resume=[_member_state(resumed[0][i]) for i in order] if resumed else None)
        for m, i in enumerate(order):
            outcomes[i] = results[m]
    except Exception as exc:
        error = exc
        raise
    finally:
        summaries = [_finish(p, outcomes[i], error) for i, p in enumerate(prepared)]
    if any(s["status"] == INTERRUPTED for s in summaries):
        raise KeyboardInterrupt
    return summaries


def _member_state(ckpt: MemberState) -> MemberState:
    """The trainer's part of a checkpoint (its tensors without the process's RNG, its member info)."""
    return MemberState({k: v for k, v in ckpt.tensors.items() if k != "rng.torch"}, ckpt.info["member"])


def _resume(jobs: list[Job], keys: list[str], data: ToyFeatures | ActivationShards, seeds: list[int],
            stream: list[int]) -> tuple[list[MemberState], list[list[dict[str, Any]]], list[Any]] | None:
    """What the pack continues from, when every job's run dir holds a whole checkpoint of its config at one
    step: (each job's checkpoint as tensors and its whole state, each job's metrics rows so far, the batch
    streams at that step). None: the pack starts over, and any checkpoint it left is removed, with one
    log line naming the reason."""
    found = checkpoint.load_round([j.run_dir for j in jobs], keys)
    if found is None:
        for j in jobs:
            checkpoint.discard(j.run_dir)
        return None
    try:
        ckpts = [MemberState(tensors, state) for tensors, state in found]
        for j, c in zip(jobs, ckpts, strict=True):
            check_member_state(MemberState(c.tensors, c.info["member"]), j.cfg.data.n, j.cfg.dict_size,
                               j.cfg.sae.decoder_bias)
            if c.info["member"]["step"] != c.info["step"] or c.tensors.get("rng.torch") is None:
                raise ValueError(f"{j.run_dir}: checkpoint state inconsistent")
        rows = [read_rows(j.run_dir / METRICS_FILE, int(c.info["metrics_rows"])) for j, c in zip(jobs, ckpts, strict=True)]
        positions = {stream[i]: ckpts[i].info["stream"] for i in range(len(jobs))}
        streams = [data.batches(jobs[0].cfg.train.batch_size, s, positions[k]) for k, s in enumerate(seeds)]
        torch.Generator().set_state(ckpts[0].tensors["rng.torch"])  # a bad RNG state raises here, not later
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
        log.warning(f"checkpoint ignored: {single_line(exc)}; the run starts over")
        for j in jobs:
            checkpoint.discard(j.run_dir)
        return None
    for j in jobs:
        checkpoint.clean_temp(j.run_dir)
    return ckpts, rows, streams


def format_summary(summary: dict[str, Any], run_dir: Path | None = None) -> str:
    """A short human-readable table of a finished run."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [("status", summary["status"]), ("alpha", summary["alpha"]), ("dict_size J", summary["dict_size"]),
            ("true features h", summary.get("h")), ("samples", summary.get("samples")),
            ("MMCS true->learned", summary.get("mmcs")), ("MMCS learned->true", summary.get("mmcs_learned")),
            ("recovered cos>0.9", summary.get("recovered_90")), ("recovered cos>0.99", summary.get("recovered_99")),
            ("FVU", summary.get("fvu")), ("L0", summary.get("l0")), ("dead latents", summary.get("dead")),
            ("loss", summary.get("loss")), ("train samples/s", summary.get("samples_per_s")),
            ("wall time s", summary.get("wall_time_s"))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {fmt(v)}" for k, v in rows]
    if summary.get("message"):
        lines.append(f"{'message'.ljust(width)}  {summary['message']}")
    if run_dir is not None:
        lines.append(f"{'run dir'.ljust(width)}  {run_dir}")
    return "\n".join(lines)
