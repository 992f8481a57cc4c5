"""The SAELens export (sae_sweep/export.py): codes and reconstructions by SAELens's documented formula
equal ours on raw inputs (the fold checked without SAELens; tests/e2e/test_saelens_export.py runs SAELens).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_sweep.export import SAELENS_CFG, SAELENS_DIR, SAELENS_WEIGHTS, export_run, main
from sae_sweep.run import run
from sae_sweep.sae import SAE
from tests.helpers.build import build_cfg
from tests.helpers.export import activation_run, ours, random_sae, raw_and_map


def _saelens_formula(out: Path, y_BN: torch.Tensor):
    """SAELens's standard forward with apply_b_dec_to_input, written out from its documented layout."""
    t = load_file(str(out / SAELENS_WEIGHTS))
    c = torch.relu((y_BN - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    return c, c @ t["W_dec"] + t["b_dec"]


# --- without SAELens: the files and the fold ------------------------------------------------------------

def test_load__accepts_a_str_path(tmp_path):
    sae = random_sae(8, 16)
    sae.save(str(tmp_path))
    assert torch.equal(SAE.load(str(tmp_path)).W_enc_KNJ, sae.W_enc_KNJ)


def test_run__writes_a_saelens_dir_beside_our_own_files_which_still_load(tmp_path):
    run_dir = tmp_path / "run"
    run(build_cfg(), run_dir)
    cfg = json.loads((run_dir / SAELENS_DIR / SAELENS_CFG).read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 64 and cfg["architecture"] == "standard"
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    t = load_file(str(run_dir / SAELENS_DIR / SAELENS_WEIGHTS))
    assert t["W_enc"].shape == (16, 64) and t["W_dec"].shape == (64, 16)
    ours = SAE.load(run_dir)  # our cfg.json and sae.safetensors are untouched
    assert ours.n == 16 and ours.dict_size == 64


@pytest.mark.parametrize("n, j", [(12, 40), (12, 12)])
def test_export__old_run_dir_gives_our_codes_and_reconstructions_by_saelens_formula(tmp_path, n, j):
    sae = random_sae(n, j)
    sae.save(tmp_path / "old")  # a run dir from before the export: no saelens/
    out = export_run(tmp_path / "old", tmp_path / "out")
    y = torch.randn(32, n, generator=torch.Generator().manual_seed(1)) + 0.5
    c_ours, z_ours = ours(sae, y)
    c, z = _saelens_formula(out, y)
    assert torch.allclose(c, c_ours, atol=1e-5) and torch.allclose(z, z_ours, atol=1e-5)


@pytest.mark.parametrize("scale", ["unit_norm", "none"])
def test_export__normalised_activations_are_folded_so_the_export_acts_on_raw_rows(tmp_path, scale):
    run_dir, cfg = activation_run(tmp_path, dict_size=20, scale=scale)
    y_raw, mean_N, s = raw_and_map(run_dir, cfg)
    assert mean_N.abs().max() > 1.0 and (scale == "none" or abs(s - 1.0) > 0.5)
    c_ours, z_ours = ours(SAE.load(run_dir), y_raw, mean_N, s)
    written = _saelens_formula(run_dir / SAELENS_DIR, y_raw)
    shutil.rmtree(run_dir / SAELENS_DIR)  # as in a run dir from before the export: rebuilt from the data file
    rebuilt = _saelens_formula(export_run(run_dir, tmp_path / "out"), y_raw)
    for c, z in (written, rebuilt):
        assert torch.allclose(c, c_ours, atol=1e-4) and torch.allclose(z, z_ours, atol=1e-3 * z_ours.abs().max())


def test_export_cli__writes_the_dir_and_says_how_to_load_it(tmp_path, capsys):
    random_sae(6, 10).save(tmp_path / "old")
    main([str(tmp_path / "old"), str(tmp_path / "out")])
    assert "load_from_disk" in capsys.readouterr().out
    assert (tmp_path / "out" / SAELENS_CFG).is_file() and (tmp_path / "out" / SAELENS_WEIGHTS).is_file()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nothing"), str(tmp_path / "out2")])
    assert exc.value.code == 2
