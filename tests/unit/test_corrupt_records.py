"""Damaged records in process: every reader raises record.RecordError naming the file, and the table
and the loader check what they read.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sae_sweep.record import RecordError, check_finished, read_tensors, tensor_header
from sae_sweep.run import run
from sae_sweep.sae import SAE
from sae_sweep.table import collect_runs
from tests.helpers.build import build_cfg


def _scribble(path: Path, at: float = 0.6, count: int = 64) -> None:
    """Overwrite ``count`` bytes at a relative position with other bytes (the file keeps its size)."""
    data = bytearray(path.read_bytes())
    pos = int(len(data) * at)
    data[pos : pos + count] = bytes((b + 1) % 256 for b in data[pos : pos + count])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    assert run(build_cfg(train={"num_samples": 4096, "eval_every": 2048}), d)["status"] == "completed"
    return d


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst


def test_check_finished__a_whole_record_passes_and_lists_the_digests(finished):
    summary = check_finished(finished)
    assert set(summary["files"]) == {"sae.safetensors", "cfg.json", "latents.safetensors", "ground_truth.safetensors"}


@pytest.mark.parametrize("name", ["sae.safetensors", "latents.safetensors", "ground_truth.safetensors", "cfg.json"])
def test_check_finished__any_changed_byte_names_the_file(finished, tmp_path, name):
    d = _copy(finished, tmp_path / "d")
    _scribble(d / name, at=0.9, count=4)  # in the tensor data: the header still parses
    with pytest.raises(RecordError, match=rf"{name}: changed or damaged"):
        check_finished(d)


def test_check_finished__a_record_without_digests_is_parsed_for_shapes(finished, tmp_path):
    d = _copy(finished, tmp_path / "d")
    summary = json.loads((d / "summary.json").read_text())
    del summary["files"]  # as written before digests were recorded
    (d / "summary.json").write_text(json.dumps(summary))
    check_finished(d)
    save_file({"frequency": np.zeros(5, np.float32), "mean_activation": np.zeros(5, np.float32)},
              str(d / "latents.safetensors"))
    with pytest.raises(RecordError, match=r"latents.safetensors: frequency has shape \[5\], expected \[64\]"):
        check_finished(d)
    (d / "sae.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(RecordError, match=r"sae.safetensors: not a safetensors file"):
        check_finished(d)


def test_readers__truncated_garbage_and_non_finite_files_are_record_errors(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones((4, 3), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(RecordError, match="truncated or padded"):
        tensor_header(path)
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(RecordError, match="not a safetensors file"):
        read_tensors(path)
    save_file({"a": np.array([1.0, np.nan], np.float32)}, str(path))
    with pytest.raises(RecordError, match="a holds NaN or inf"):
        read_tensors(path)
    with pytest.raises(RecordError, match="missing"):
        read_tensors(tmp_path / "nope.safetensors")


def test_sae_load__cfg_json_is_checked_against_the_tensors_before_allocating(finished, tmp_path):
    d = _copy(finished, tmp_path / "d")
    assert SAE.load(str(d)).dict_size == 64  # a str path works too
    cfg = json.loads((d / "cfg.json").read_text())
    (d / "cfg.json").write_text(json.dumps({**cfg, "dict_size": 100_000_000_000}))  # would be 12.8 TB
    with pytest.raises(RecordError, match=r"cfg.json: n and dict_size must be integers in \[1, 16777216\]"):
        SAE.load(d)
    (d / "cfg.json").write_text(json.dumps({**cfg, "dict_size": 32}))
    with pytest.raises(RecordError, match=r"sae.safetensors: W_enc must be F32 of shape \[32, 16\]"):
        SAE.load(d)
    (d / "cfg.json").write_text("{not json")
    with pytest.raises(RecordError, match="cfg.json: not readable JSON"):
        SAE.load(d)


def test_table__a_seed_past_int64_in_an_old_record_does_not_crash_the_table(finished, tmp_path):
    sweep = tmp_path / "sweep"
    d = _copy(finished, sweep / "cell")
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**summary, "seed": 2**64 + 1}))
    (d / "cell.json").write_text(json.dumps({"cell_key": "k", "overrides": []}))
    df = collect_runs(sweep)
    assert df["seed"].iloc[0] == str(2**64 + 1)
