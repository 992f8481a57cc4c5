"""SAELens export: a directory that ``sae_lens.SAE.load_from_disk(path)`` loads as it is.

    python -m sae_sweep.export RUN_DIR OUT      # OUT gets cfg.json + sae_weights.safetensors

Every finished run with weights already holds one in ``RUN_DIR/saelens/`` (run.py writes it); the
command copies that, or builds it for older run dirs from ``sae.safetensors`` and ``config.yaml``.

The format (SAELens 6.x, checked against 6.54): ``sae_weights.safetensors`` with ``W_enc`` (N, J),
``W_dec`` (J, N), ``b_enc`` (J,), ``b_dec`` (N,), and ``cfg.json`` with ``architecture: standard``,
``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input: true`` (SAELens then computes
``ReLU((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec``, our forward with the matrices transposed),
``normalize_activations: none`` and ``metadata.sae_lens_version`` >= 6, which tells SAELens the file
needs none of its legacy conversions. Our matrices are stored transposed relative to SAELens's, so
for a square SAE (J = N) only the names tell which is which: the export transposes explicitly.

Activations that were centred and scaled for training (``data.center``, ``data.scale``: the map
y' = (y - m) / s, see data/activations.py) are folded into the weights, so the exported SAE acts on
raw activations and returns raw reconstructions: with y' - b_dec = (y - (m + s b_dec)) / s,
``W_enc = W / s``, ``b_dec = m + s b_dec`` and ``W_dec = s D`` (atoms then have norm s); codes are
unchanged. No SAELens code is imported here.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from sae_sweep.record import CONFIG_FILE, SAE_CFG_FILE, WEIGHTS_FILE
from sae_sweep.sae import SAE

SAELENS_DIR = "saelens"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"  # SAELens's own name (as is sae_sweep's SAE_CFG_FILE; the formats differ)
SAELENS_FORMAT_VERSION = "6.54.12"  # the release the export is tested against (tests/e2e/test_saelens_export.py)


class ExportError(RuntimeError):
    """A run dir that cannot be exported (no weights, or its normalisation cannot be recovered)."""


def saelens_tensors(sae: SAE, i: int = 0, mean_N: torch.Tensor | None = None,
                    scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Member i's weights in SAELens's layout, the input map y -> (y - mean) / scale folded in."""
    with torch.no_grad():
        w_enc_NJ = sae.W_enc_KNJ[i].detach().to(torch.float32).cpu()
        w_dec_JN = sae.W_dec_KJN[i].detach().to(torch.float32).cpu()
        b_enc_J = sae.b_enc_KJ[i].detach().to(torch.float32).cpu()
        b_dec_N = sae.b_dec_KN[i].detach().to(torch.float32).cpu()
        mean = torch.zeros_like(b_dec_N) if mean_N is None else mean_N.detach().to(torch.float32).cpu()
        return {"W_enc": (w_enc_NJ / scale).contiguous(), "W_dec": (w_dec_JN * scale).contiguous(),
                "b_enc": b_enc_J.contiguous(), "b_dec": (mean + scale * b_dec_N).contiguous()}


def saelens_cfg(n: int, dict_size: int, info: dict | None = None) -> dict:
    """SAELens's cfg.json for a standard (ReLU) SAE; ``info`` lands in ``metadata`` (where it can't clash)."""
    return {
        "architecture": "standard",
        "d_in": n,
        "d_sae": dict_size,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                     "exported_by": "sae_sweep", **(info or {})},
    }


def write_saelens(out: Path, sae: SAE, i: int = 0, *, mean_N: torch.Tensor | None = None, scale: float = 1.0,
                  info: dict | None = None) -> Path:
    """Write member i of ``sae`` as an SAELens directory ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(saelens_tensors(sae, i, mean_N, scale), str(out / SAELENS_WEIGHTS))
    (out / SAELENS_CFG).write_text(json.dumps(saelens_cfg(sae.n, sae.dict_size, info), indent=2))
    return out


def input_map(data_cfg: dict) -> tuple[torch.Tensor | None, float]:
    """(mean (N,) or None, scale) of a run's input normalisation, from its config.yaml's ``data``."""
    if data_cfg.get("kind") != "activations" or (not data_cfg.get("center") and data_cfg.get("scale") == "none"):
        return None, 1.0
    from sae_sweep.config import ActivationsDataConfig, ConfigError
    from sae_sweep.data.activations import ActivationShards

    try:
        shards = ActivationShards(ActivationsDataConfig(**data_cfg))
    except (ConfigError, OSError) as exc:
        raise ExportError(f"the run trained on normalised activations (center={data_cfg.get('center')}, "
                          f"scale={data_cfg.get('scale')}) and its data file is needed to fold the mean and "
                          f"scale into the weights: {exc}") from None
    return torch.from_numpy(np.asarray(shards.mean_N)), float(shards.scale)


def export_run(run_dir: Path, out: Path) -> Path:
    """An SAELens directory ``out`` for the run in ``run_dir`` (copied from ``run_dir/saelens`` when there)."""
    run_dir, out = Path(run_dir), Path(out)
    ready = run_dir / SAELENS_DIR
    if (ready / SAELENS_CFG).is_file() and (ready / SAELENS_WEIGHTS).is_file():
        out.mkdir(parents=True, exist_ok=True)
        for name in (SAELENS_CFG, SAELENS_WEIGHTS):
            shutil.copyfile(ready / name, out / name)
        return out
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise ExportError(f"{run_dir} holds no {WEIGHTS_FILE} (a run with train.save_weights=false, or unfinished)")
    cfg_path = run_dir / CONFIG_FILE
    data_cfg = (yaml.safe_load(cfg_path.read_text()) or {}).get("data", {}) if cfg_path.is_file() else {}
    mean_N, scale = input_map(data_cfg)
    return write_saelens(out, SAE.load(run_dir), mean_N=mean_N, scale=scale, info=run_info(run_dir))


def run_info(run_dir: Path) -> dict:
    """What a SAELens user may want to know of the run (kept under cfg.json's ``metadata``)."""
    cfg = json.loads((run_dir / SAE_CFG_FILE).read_text()) if (run_dir / SAE_CFG_FILE).is_file() else {}
    return {"sae_sweep_run_dir": str(Path(run_dir).resolve()),
            **{f"sae_sweep_{k}": cfg[k] for k in ("alpha", "l1_norm", "loss_normalisation") if k in cfg}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sae_sweep.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run dir (holds sae.safetensors)")
    p.add_argument("out", type=Path, help="the directory to write (cfg.json + sae_weights.safetensors)")
    args = p.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out)
    except ExportError as exc:
        p.exit(2, f"sae_sweep.export: error: {exc}\n")
    print(f"{out}  (load with: sae_lens.SAE.load_from_disk({str(out)!r}))")


if __name__ == "__main__":
    main()
