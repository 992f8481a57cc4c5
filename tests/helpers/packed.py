"""Checks shared by the packed and padded training tests: a packed member equals its solo run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

COMPARED = ("loss", "mse", "l1", "mmcs", "fvu", "l0", "dead")


def assert_same_run(packed_dir: Path, solo_dir: Path, packed: dict, solo: dict) -> None:
    """Same status, metrics, weights and metrics.jsonl rows, to float tolerance."""
    assert packed["status"] == solo["status"] == "completed"
    for key in COMPARED:
        assert packed[key] == pytest.approx(solo[key], rel=1e-4, abs=1e-6), key
    a, b = load_file(str(packed_dir / "sae.safetensors")), load_file(str(solo_dir / "sae.safetensors"))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    rows_p = [json.loads(x) for x in (packed_dir / "metrics.jsonl").read_text().splitlines()]
    rows_s = [json.loads(x) for x in (solo_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows_p] == [r["samples"] for r in rows_s]
    assert [r["loss"] for r in rows_p] == pytest.approx([r["loss"] for r in rows_s], rel=1e-4)
