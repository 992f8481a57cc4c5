"""The SAELens export against SAELens itself: what it computes from the export equals ours on raw inputs.

The checks run SAELens's own client in its own environment, never the project's:
    python -m venv ~/.cache/sae_sweep/saelens-venv && ~/.cache/sae_sweep/saelens-venv/bin/pip install torch sae-lens
and SAE_SWEEP_SAELENS=1 (SAE_SWEEP_SAELENS_PYTHON names another interpreter); they skip otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_sweep.export import SAELENS_DIR, export_run
from sae_sweep.sae import SAE
from tests.helpers.cli import REPO
from tests.helpers.export import activation_run, ours, random_sae, raw_and_map

SAELENS_PYTHON = Path(os.environ.get("SAE_SWEEP_SAELENS_PYTHON",
                                     Path.home() / ".cache/sae_sweep/saelens-venv/bin/python"))
needs_saelens = pytest.mark.skipif(
    os.environ.get("SAE_SWEEP_SAELENS") != "1" or not SAELENS_PYTHON.exists(),
    reason="SAELens check: set SAE_SWEEP_SAELENS=1 with sae-lens in ~/.cache/sae_sweep/saelens-venv")


def _saelens(out: Path, y_BN: torch.Tensor, tmp_path: Path):
    save_file({"y": y_BN.contiguous()}, str(tmp_path / "y.safetensors"))
    res = subprocess.run([str(SAELENS_PYTHON), str(REPO / "tests" / "helpers" / "saelens_apply.py"), str(out),
                          str(tmp_path / "y.safetensors"), str(tmp_path / "saelens_out.safetensors")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "StandardSAE" in res.stdout, res.stdout
    t = load_file(str(tmp_path / "saelens_out.safetensors"))
    return t["codes"], t["recon"]


# --- with SAELens itself, in its own environment ---------------------------------------------------------

@needs_saelens
@pytest.mark.parametrize("n, j", [(12, 40), (12, 12)])  # square J = n: only the names tell W_enc from W_dec
def test_saelens__loads_the_export_and_matches_our_codes_and_reconstructions(tmp_path, n, j):
    sae = random_sae(n, j)
    sae.save(tmp_path / "old")
    out = export_run(tmp_path / "old", tmp_path / "out")
    y = torch.randn(32, n, generator=torch.Generator().manual_seed(1)) + 0.5
    c_ours, z_ours = ours(sae, y)
    c, z = _saelens(out, y, tmp_path)
    assert (c_ours > 0).any() and torch.allclose(c, c_ours, atol=1e-5) and torch.allclose(z, z_ours, atol=1e-5)


@needs_saelens
def test_saelens__a_run_on_normalised_activations_reconstructs_raw_rows_as_we_do(tmp_path):
    run_dir, cfg = activation_run(tmp_path, dict_size=12)  # square as well
    y_raw, mean_N, s = raw_and_map(run_dir, cfg)
    c_ours, z_ours = ours(SAE.load(run_dir), y_raw, mean_N, s)
    c, z = _saelens(run_dir / SAELENS_DIR, y_raw, tmp_path)
    assert torch.allclose(c, c_ours, atol=1e-4) and torch.allclose(z, z_ours, atol=1e-3 * z_ours.abs().max())
