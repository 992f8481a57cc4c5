"""One run, end to end: build data and SAE from a RunConfig, train, and write the run dir.

Run dir contents: config.yaml (resolved), metrics.jsonl (a row per evaluation), summary.json
(final metrics, status, timings, versions), sae.safetensors + cfg.json, latents.safetensors (each
latent's firing frequency and mean activation on the eval set at the last evaluation),
ground_truth.safetensors (toy data only: real activations have none), and wandb/ when W&B is on. Imports no hydra or optuna; wandb only through sinks.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from sae_sweep.config import RunConfig, loss_normalisation, trainer_alpha
from sae_sweep.data.activations import ActivationShards
from sae_sweep.data.toy import ToyFeatures, derive_seed
from sae_sweep.sae import SAE
from sae_sweep.sinks import JsonlSink, MetricSink, WandbSink
from sae_sweep.train import COMPLETED, FAILED, INTERRUPTED, EvalSet, StopFn, train

STREAM_SAE_INIT = 3
SUMMARY_KEYS = ("mmcs", "mmcs_learned", "recovered_90", "recovered_99", "loss", "mse", "l1", "l1_sum", "fvu",
                "l0", "dead", "alive")
LATENTS_FILE = "latents.safetensors"


class RunDiverged(RuntimeError):
    """The run's loss stopped being finite; its summary.json records status 'diverged'."""


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


def run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    run_name: str | None = None,
    group: str | None = None,
    should_stop: StopFn | None = None,
    extra_sinks: Callable[[], list[MetricSink]] | None = None,
) -> dict[str, Any]:
    """Train one SAE as configured and record it in ``run_dir``; returns the summary dict.

    The summary (also in summary.json) has ``status`` completed, diverged, pruned, interrupted or
    failed; sinks are finished in every case. Ctrl-C is re-raised after the record is written.
    """
    wall0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_name = run_name or cfg.name
    cfg_dict = dataclasses.asdict(cfg)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)

    if cfg.data.kind == "activations":
        data: ToyFeatures | ActivationShards = ActivationShards(cfg.data)
        eval_set = EvalSet(data.eval_set().to(device), None)
        data_fields = {"n": cfg.data.n, "h": None, "data_seed": None,
                       "data_path": cfg.data.path, "data_rows": data.rows}
    else:
        data = ToyFeatures(cfg.data)
        truth = data.ground_truth
        save_file(truth.tensors(), str(run_dir / "ground_truth.safetensors"))
        eval_set = EvalSet(data.eval_set().to(device), truth.features_HN.to(device))
        data_fields = {"n": cfg.data.n, "h": cfg.data.h, "data_seed": cfg.data.seed}
    init = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_SAE_INIT))
    sae = SAE(cfg.data.n, cfg.dict_size, 1, decoder_bias=cfg.sae.decoder_bias,
              init_scale=cfg.sae.init_scale, generator=init, device=device)
    setup_s = time.perf_counter() - wall0

    sinks: list[MetricSink] = [JsonlSink(run_dir / "metrics.jsonl")]
    summary: dict[str, Any] = {
        "status": FAILED, "message": "", "name": run_name, "group": group,
        "alpha": cfg.alpha, "dict_size": cfg.dict_size, "seed": cfg.seed,
        **data_fields,
        "l1_norm": cfg.sae.l1_norm, "loss_normalisation": loss_normalisation(cfg),
        "trainer_alpha": trainer_alpha(cfg), "eval_size": cfg.data.eval_size,
        "device": str(device), "threads": torch.get_num_threads(),
    }
    outcome = None
    try:
        if cfg.logger.wandb.mode != "disabled":
            w = cfg.logger.wandb
            sinks.append(WandbSink(run_dir=run_dir, mode=w.mode, project=w.project, entity=w.entity,
                                   name=run_name, group=w.group or group or cfg.name, tags=w.tags,
                                   config=cfg_dict))
        if extra_sinks is not None:
            sinks.extend(extra_sinks())
        batches = data.batches(cfg.train.batch_size, cfg.seed)
        outcome = train(sae, [trainer_alpha(cfg)], batches, cfg.train, eval_set, [sinks], should_stop)[0]
        summary["status"], summary["message"] = outcome.status, outcome.message
    except Exception as exc:
        summary["status"], summary["message"] = FAILED, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        final = outcome.final if outcome is not None else {}
        summary.update({k: _finite_or_none(final.get(k)) for k in SUMMARY_KEYS})
        summary.update({
            "samples": outcome.samples if outcome is not None else 0,
            "train_time_s": final.get("train_time_s"),
            "samples_per_s": final.get("samples_per_s"),
            "setup_time_s": setup_s,
            "wall_time_s": time.perf_counter() - wall0,
            "versions": library_versions(),
        })
        if cfg.train.save_weights and outcome is not None:
            sae.save(run_dir, 0, extra={"alpha": cfg.alpha, "l1_norm": cfg.sae.l1_norm,
                                        "loss_normalisation": loss_normalisation(cfg)})
        if outcome is not None and outcome.latent_frequency_J is not None:
            save_file({"frequency": outcome.latent_frequency_J, "mean_activation": outcome.latent_mean_J},
                      str(run_dir / LATENTS_FILE))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        for sink in sinks:
            sink.finish(summary)
    if summary["status"] == INTERRUPTED:
        raise KeyboardInterrupt
    return summary


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


def is_success(summary: dict[str, Any]) -> bool:
    return summary.get("status") == COMPLETED
