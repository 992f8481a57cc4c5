"""Checks of a run's config beyond its dataclass fields' ranges: keys the schema does not know, the
device, and whether the run fits this machine's memory. All raise ConfigError with one line naming
the field, the value and what is allowed, before anything is allocated or written.

Memory bound: a run's peak is estimated from its sizes (float32 throughout):
  SAE        6 x (2 n J + J + n)        weights, gradients, Adam's two moments, the drift snapshot, slack
  step       B x (6 J + 4 n)            pre-activations, codes, their gradients, reconstruction, input
  eval       eval_size x n + 3 x 1024 J the held-out set and one eval chunk's codes
  toy data   n h + r h + 3 max(B, 8192) h + J h   features, factor directions, a drawn chunk, the MMCS cosines
and must not exceed the machine's physical memory (``os.sysconf``; a CUDA run's SAE also lives on the
device, whose own limit torch enforces). When it does, the field whose size costs the most is named
with the largest value that would fit. Torch-free: the grid sweeper runs these on every cell before
launching any.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from sae_sweep.config import ConfigError, RunConfig, ToyDataConfig

FLOAT_BYTES = 4
EVAL_CHUNK = 1024  # rows per eval forward pass (train.EvalSet.chunk)
TOY_DRAW_ROWS = 8192  # rows per eval-set draw of the toy generator (data/toy.py)
SIZE_FIELDS = ("dict_size", "data.n", "data.h", "data.eval_size", "train.batch_size")


def machine_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _sizes(cfg: RunConfig) -> dict[str, int]:
    toy = isinstance(cfg.data, ToyDataConfig)
    return {"dict_size": cfg.dict_size, "data.n": cfg.data.n, "data.h": cfg.data.h if toy else 0,
            "data.eval_size": cfg.data.eval_size, "train.batch_size": cfg.train.batch_size,
            "rank": cfg.data.correlation_rank if toy else 0}


def bytes_needed(sizes: Mapping[str, int]) -> int:
    """Estimated peak memory of one run with these sizes (module docstring)."""
    j, n, h = sizes["dict_size"], sizes["data.n"], sizes["data.h"]
    b, e, r = sizes["train.batch_size"], sizes["data.eval_size"], sizes["rank"]
    floats = 6 * (2 * n * j + j + n) + b * (6 * j + 4 * n) + e * n + 3 * EVAL_CHUNK * j
    if h:
        floats += n * h + r * h + 3 * max(b, TOY_DRAW_ROWS) * h + j * h
    return FLOAT_BYTES * floats


def _gib(b: int) -> str:
    return f"{b / 2**30:,.1f} GiB"


def check_fits(cfg: RunConfig, memory: int | None = None) -> None:
    """Raise ConfigError naming the costliest size field when the run cannot fit in ``memory`` bytes."""
    memory = machine_memory() if memory is None else memory
    sizes = _sizes(cfg)
    need = bytes_needed(sizes)
    if need <= memory:
        return
    fields = [f for f in SIZE_FIELDS if sizes[f] > 1]
    field = max(fields, key=lambda f: need - bytes_needed({**sizes, f: 1}))
    lo, hi = 1, sizes[field]  # the largest value of `field` that fits, the others fixed
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if bytes_needed({**sizes, field: mid}) <= memory else (lo, mid - 1)
    fits = bytes_needed({**sizes, field: lo}) <= memory
    allowed = f"at most {lo:,}" if fits else "smaller (the other sizes alone exceed it)"
    raise ConfigError(f"{field} must be {allowed} on this machine, got {sizes[field]:,}: the run would need about "
                      f"{_gib(need)} of memory and the machine has {_gib(memory)}")


def check_device(name: str) -> None:
    """A CUDA device must exist when one is asked for (torch is imported only then)."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"train.device must be cpu or auto on this machine (torch sees no CUDA device), got {name!r}")
    if ":" in name and int(name.split(":", 1)[1]) >= torch.cuda.device_count():
        raise ConfigError(f"train.device must name a device in cuda:0 .. cuda:{torch.cuda.device_count() - 1}, "
                          f"got {name!r}")


def unknown_keys(given: Mapping[str, Any], obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``given`` (a plain nested dict) that no field of the dataclass ``obj`` holds."""
    known = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    out: list[str] = []
    for key, value in given.items():
        path = f"{prefix}{key}"
        if key not in known:
            out.append(path)
        elif isinstance(value, Mapping) and dataclasses.is_dataclass(known[key]):
            out.extend(unknown_keys(value, known[key], f"{path}."))
    return out


def check_run(cfg: RunConfig, given: Mapping[str, Any]) -> RunConfig:
    """Every check above on a converted config; ``given`` is the composed config as a plain dict."""
    unknown = unknown_keys({k: v for k, v in given.items() if k != "hydra"}, cfg)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a config field (see python -m sae_sweep --cfg job for the fields), "
                          f"got {unknown[0]}={_lookup(given, unknown[0])!r}")
    check_device(cfg.train.device)
    check_fits(cfg)
    return cfg


def _lookup(given: Mapping[str, Any], dotted: str) -> Any:
    node: Any = given
    for part in dotted.split("."):
        node = node[part]
    return node
