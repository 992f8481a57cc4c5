"""Checkpoints inside a run: one file per run dir, written atomically, read back only if it is whole.

A checkpoint is one safetensors file (record.CHECKPOINT_FILE): the member's tensors (:class:`MemberState`:
weights, Adam's state, the convergence rule's atoms, latent statistics) and, in its header's metadata,
one JSON object: the member's state, the batch stream's position, the torch RNG state, how many rows
of metrics.jsonl it stands for, the run config's key and a SHA-256 of the tensors. One file, so one
``os.replace`` makes it visible whole or not at all; no pickle anywhere (safetensors and JSON only).

A pack writes a round (one checkpoint per member, same step) as: every member's new file to a temp
file, then member by member the current checkpoint becomes the previous one
(record.CHECKPOINT_PREVIOUS_FILE) and the temp file the current one. A kill inside a round leaves
every member with the round before it, current or previous, so :func:`load_round` resumes the pack
from the latest step every member has whole. Anything else (a damaged or truncated file, another
config, a format this code does not read) is ignored with one log line per file: the run starts over.

What the trainer keeps of a member, and puts back, is here too: :class:`MemberState` and the tensors of
one member of a group (:func:`member_tensors`, :func:`load_member_`); which outcome, loss window and
convergence streak go with them is train.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from sae_sweep.adam import Adam
from sae_sweep.config import RunConfig
from sae_sweep.kill import kill_point, raise_point  # os-only test hooks (SAE_SWEEP_KILL_AT / _RAISE_AT)
from sae_sweep.record import (
    CHECKPOINT_FILE,
    CHECKPOINT_PREVIOUS_FILE,
    FAILED,
    INTERRUPTED,
    RESULT_NEUTRAL_KEYS,
    SUMMARY_FILE,
    RecordError,
    read_json,
    remove_checkpoints,
    single_line,
    tensor_header,
)
from sae_sweep.sae import SAE, copy_member_tensors_

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the content changes: an older checkpoint is then ignored, never misread
_META_KEY = "sae_sweep.checkpoint"


@dataclass
class MemberState:
    """One member's whole training state between two steps: what a checkpoint holds for it and what
    ``train(resume=...)`` continues from, so that the run ends exactly as without the break.

    ``tensors`` (CPU, the member's own J): ``param.<name>`` its parameters (stopped members:
    ``stopped.<name>``, the weights it stopped with), ``adam.<key>.<name>`` Adam's state of each
    parameter, ``conv_atoms`` the convergence rule's last atoms, ``latent_frequency`` / ``latent_mean``.
    ``info`` (JSON): the step reached, the open loss window, the outcome so far, the rule's streak.
    """

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]


def sae_tensors(sae: SAE, prefix: str) -> dict[str, torch.Tensor]:
    """``prefix.<name>`` for every parameter and buffer of ``sae``, copied to the CPU."""
    return {f"{prefix}.{name}": t.detach().cpu().clone() for name, t in
            (dict(sae.named_buffers()) | dict(sae.named_parameters())).items()}


def sae_from(tensors: dict[str, torch.Tensor], prefix: str, like: SAE, j: int) -> SAE:
    """A single-member SAE of size ``j`` (input dim and decoder bias as ``like``) holding ``tensors[prefix.<name>]``."""
    out = SAE(like.n, j, 1, decoder_bias=like.decoder_bias, device=like.W_dec_KJN.device)
    with torch.no_grad():
        for name, t in (dict(out.named_buffers()) | dict(out.named_parameters())).items():
            src = tensors[f"{prefix}.{name}"]
            if src.shape != t.shape:
                raise ValueError(f"{prefix}.{name} has shape {list(src.shape)}, expected {list(t.shape)}")
            t.copy_(src)
    return out


@torch.no_grad()
def member_tensors(sae: SAE, opt: Adam, k: int) -> dict[str, torch.Tensor]:
    """Member k of a group (its SAE and Adam): ``param.*`` and ``adam.*`` of :class:`MemberState`, at its own J, on the CPU."""
    member = sae.member(k)
    tensors = sae_tensors(member, "param")
    params = dict(member.named_parameters())
    for name, p in sae.named_parameters():
        for key, v in opt.state.get(p, {}).items():
            if v.shape == p.shape:  # a moment: the member's own slice, at its J
                moment = torch.zeros_like(params[name])
                copy_member_tensors_({name: moment}, {name: v}, [k])
                tensors[f"adam.{key}.{name}"] = moment.cpu()
            else:  # Adam's step count
                tensors[f"adam.{key}.{name}"] = v.detach().cpu().clone()
    return tensors


@torch.no_grad()
def load_member_(sae: SAE, opt: Adam, k: int, tensors: dict[str, torch.Tensor], j: int) -> None:
    """The inverse of :func:`member_tensors`: member k (of size ``j``) of the group takes ``tensors``'
    parameters and Adam's state. ValueError when a parameter has the wrong shape."""
    member = sae_from(tensors, "param", sae, j)
    dst = dict(sae.named_buffers()) | dict(sae.named_parameters())
    copy_member_tensors_(dst, dict(member.named_buffers()) | dict(member.named_parameters()), [0], at=k)
    for name, p in sae.named_parameters():
        keys = [key.split(".")[1] for key in tensors if key.startswith("adam.") and key.endswith(f".{name}")]
        st = opt.state[p]
        for key in keys:
            v = tensors[f"adam.{key}.{name}"]
            if v.dim() == p.dim():  # a moment
                if key not in st:
                    st[key] = torch.zeros_like(p)
                copy_member_tensors_({name: st[key]}, {name: v.to(p.device)}, [0], at=k)
            else:
                st[key] = v.to(p.device if opt.defaults.get("fused") else "cpu").clone()


def check_member_state(st: MemberState, n: int, j: int, decoder_bias: bool) -> None:
    """ValueError unless ``st`` is a whole state of a member of input dim n and size j (before any of it is used)."""
    info, t = st.info, st.tensors
    for key, kind in (("step", int), ("window_start", int), ("train_time", float), ("running", bool),
                      ("status", str), ("message", str), ("samples", int), ("final", dict), ("converged", bool),
                      ("window", list)):
        if not isinstance(info.get(key), (int, float) if kind is float else kind):
            raise ValueError(f"member state: {key} must be {kind.__name__}, got {info.get(key)!r}")
    if len(info["window"]) != 4 or not 1 <= info["window_start"] <= info["step"] + 1:
        raise ValueError(f"member state: bad loss window {info['window']} from step {info['window_start']}")
    like = SAE(n, 1, 1, decoder_bias=decoder_bias)
    prefix = "param" if info["running"] else "stopped"
    sae = sae_from(t, prefix, like, j) if f"{prefix}.W_dec_KJN" in t else None
    if sae is None:
        raise ValueError(f"member state: no {prefix}.* weights")
    if info["running"]:
        for name, p in sae.named_parameters():
            moments = [k for k in t if k.startswith("adam.") and k.endswith(f".{name}") and t[k].dim() == p.dim()]
            if not moments or any(t[k].shape != p.shape for k in moments):
                raise ValueError(f"member state: Adam's moments of {name} missing or of the wrong shape")
    conv = info.get("conv")
    if conv is not None and (not isinstance(conv, dict) or "conv_atoms" not in t or t["conv_atoms"].shape != (j, n)):
        raise ValueError("member state: the convergence rule's state is incomplete")
    if ("latent_frequency" in t) != ("latent_mean" in t) or ("latent_frequency" in t and t["latent_frequency"].shape != (j,)):
        raise ValueError("member state: latent statistics incomplete or of the wrong size")


def resume_point(resume: Sequence[MemberState], members: int) -> tuple[int, int, float]:
    """(step reached, first step of the open loss window, training time so far) of a pack's states.
    ValueError unless there is one state per member, all of one step."""
    if len(resume) != members:
        raise ValueError(f"{len(resume)} member states for {members} members")
    steps = {int(r.info["step"]) for r in resume}
    if len(steps) != 1:
        raise ValueError(f"member states of different steps {sorted(steps)}")
    info = resume[0].info
    return int(info["step"]), int(info["window_start"]), float(info["train_time"])


def config_key(cfg: RunConfig) -> str:
    """What the checkpoint must have been taken of: the run config without the fields that do not change
    the result (record.RESULT_NEUTRAL_KEYS: naming, logging, scheduling, checkpointing)."""
    tree = dataclasses.asdict(cfg)
    for dotted in RESULT_NEUTRAL_KEYS:
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tmp(run_dir: Path) -> Path:
    return run_dir / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"


def write_round(rounds: Sequence[tuple[Path, dict[str, torch.Tensor], dict[str, Any]]]) -> None:
    """Write one checkpoint per (run dir, tensors, state) of a pack, all taken at one step (module doc).

    Kill points (tests): ``checkpoint_writing`` halfway through a temp file, ``checkpoint_replacing``
    between two members' replaces, ``checkpoint_written`` once the round is on disk (also a raise point)."""
    tmps = []
    for run_dir, tensors, state in rounds:
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        meta = {**state, "format": FORMAT, "digest": _digest(tensors), "host": socket.gethostname(), "pid": os.getpid()}
        data = save(tensors, metadata={_META_KEY: json.dumps(meta)})
        tmp = _tmp(run_dir)
        with open(tmp, "wb") as fh:
            fh.write(data[: len(data) // 2])
            kill_point("checkpoint_writing")
            fh.write(data[len(data) // 2 :])
            fh.flush()
            os.fsync(fh.fileno())
        tmps.append(tmp)
    for i, ((run_dir, _, _), tmp) in enumerate(zip(rounds, tmps, strict=True)):
        if i:
            kill_point("checkpoint_replacing")
        current = run_dir / CHECKPOINT_FILE
        if current.exists():
            current.replace(run_dir / CHECKPOINT_PREVIOUS_FILE)
        tmp.replace(current)
    kill_point("checkpoint_written")
    raise_point("checkpoint_written")


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of one checkpoint file; RecordError naming the file when it is not whole."""
    tensor_header(path)  # truncated, padded or not safetensors at all: RecordError
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = (fh.metadata() or {}).get(_META_KEY)
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as exc:  # safetensors raises its own error types for a damaged body
        raise RecordError(path, f"not readable ({type(exc).__name__}: {single_line(exc)})") from None
    try:
        state = json.loads(meta) if meta is not None else None
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise RecordError(path, "has no checkpoint state in its header")
    if state.get("format") != FORMAT:
        raise RecordError(path, f"checkpoint format {state.get('format')!r}, this version reads {FORMAT}")
    if state.get("digest") != _digest(tensors):
        raise RecordError(path, "damaged (its tensors' SHA-256 differs from the one written with them)")
    return tensors, state


def _candidates(run_dir: Path, key: str, quiet: bool = False) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """step -> (tensors, state) of the run dir's whole checkpoints of this config; one log line per bad one."""
    out = {}
    for name in (CHECKPOINT_FILE, CHECKPOINT_PREVIOUS_FILE):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            tensors, state = read(path)
            if state.get("key") != key:
                raise RecordError(path, f"taken of another config (key {state.get('key')}, this run's {key})")
            step = state.get("step")
            if not isinstance(step, int) or isinstance(step, bool) or step < 1:
                raise RecordError(path, f"step must be a positive integer, got {step!r}")
        except RecordError as exc:
            if not quiet:
                log.warning(f"checkpoint ignored: {exc}")
            continue
        out.setdefault(step, (tensors, state))
    return out


def load_round(run_dirs: Sequence[Path], keys: Sequence[str]) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None:
    """Every member's checkpoint of the latest step they all have whole (a pack resumes together), or None."""
    found = [_candidates(Path(d), k) for d, k in zip(run_dirs, keys, strict=True)]
    if not any(found):
        return None
    common = set.intersection(*(set(f) for f in found))
    if not common:
        steps = "; ".join(f"{d}: {sorted(f) or 'none'}" for d, f in zip(run_dirs, found, strict=True))
        log.warning(f"checkpoint ignored: the pack's {len(found)} members have no step in common ({steps})")
        return None
    step = max(common)
    return [f[step] for f in found]


def find_resumable(runs_dir: Path, key: str, exclude: Path) -> Path | None:
    """The newest run dir under ``runs_dir`` (other than ``exclude``) that holds a whole checkpoint of this
    config, has not ended (no summary.json, or an interrupted or failed one) and whose writer is gone:
    where a single run (whose run dir is named by its start time) killed earlier continues."""
    if not Path(runs_dir).is_dir():
        return None
    for d in sorted(Path(runs_dir).iterdir(), reverse=True):
        if d == exclude or not (d / CHECKPOINT_FILE).is_file() and not (d / CHECKPOINT_PREVIOUS_FILE).is_file():
            continue
        summary = read_json(d / SUMMARY_FILE)
        if summary is not None and summary.get("status") not in (INTERRUPTED, FAILED):
            continue
        found = _candidates(d, key, quiet=True)
        if found and not any(alive_elsewhere(state) for _, state in found.values()):
            return d
    return None


def clean_temp(run_dir: Path) -> None:
    """Remove temp files a killed checkpoint write left."""
    for tmp in Path(run_dir).glob(f".{CHECKPOINT_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)


def discard(run_dir: Path) -> None:
    """Remove the run dir's checkpoints and any temp file a killed write left."""
    remove_checkpoints(run_dir)


def alive_elsewhere(state: dict[str, Any]) -> bool:
    """The process that wrote a checkpoint still runs on this host (so its run dir is not free to take)."""
    pid = state.get("pid")
    if state.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
