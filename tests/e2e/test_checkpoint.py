"""Checkpoints inside a run: killed at an exact line (SAE_SWEEP_KILL_AT, sae_sweep/kill.py) in a
subprocess, re-run in the same run dir, and the record compared with an uninterrupted run's, bit for bit."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae_sweep import record
from sae_sweep.config import ActivationsDataConfig, ConfigError, TrainConfig
from sae_sweep.data.activations import ActivationShards
from sae_sweep.data.toy import ToyFeatures
from sae_sweep.kill import KILL_ENV, RAISE_ENV
from sae_sweep.run import Job, run, run_packed
from tests.helpers.build import build_cfg
from tests.helpers.cli import REPO, SMOKE, run_cli

KILLED = 9  # os._exit(9) at the kill point
# 64 steps of 128 samples: evaluations every 16 steps, checkpoints every 8 (inside windows and at evaluations).
TRAIN = {"num_samples": 8192, "eval_every": 2048, "checkpoint_every": 1024, "threads": 1}
TIMING = ("train_time_s", "samples_per_s", "setup_time_s", "wall_time_s", "versions", "files", "threads")
CHILD = """
import json, sys
from pathlib import Path
from tests.helpers.build import build_cfg
from sae_sweep.run import Job, run_packed
run_packed([Job(build_cfg(**spec), Path(d)) for d, spec in json.loads(sys.argv[1])])
"""


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def killed_at(point: str, jobs: list[tuple[Path, dict]]) -> None:
    """Train ``jobs`` (run dir, build_cfg keywords) as one pack in a subprocess that dies at ``point``."""
    env = {**os.environ, KILL_ENV: point, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([(str(d), s) for d, s in jobs])], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == KILLED, f"exit {proc.returncode}, not killed at {point}\n{proc.stderr[-3000:]}"


def bits(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as their bit patterns (NaN equals NaN: a diverged run's weights)."""
    return {k: v.view(torch.int32) for k, v in load_file(str(path)).items()}


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / record.METRICS_FILE).read_text().splitlines()]


def assert_same_record(resumed: Path, whole: Path) -> None:
    for name in (record.WEIGHTS_FILE, record.LATENTS_FILE):
        a, b = bits(resumed / name), bits(whole / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert rows(resumed) == rows(whole)  # every evaluation once, with the same numbers
    sa, sb = (json.loads((d / record.SUMMARY_FILE).read_text()) for d in (resumed, whole))
    assert {k: v for k, v in sa.items() if k not in TIMING} == {k: v for k, v in sb.items() if k not in TIMING}


def no_checkpoint_left(run_dir: Path) -> bool:
    return not list(run_dir.glob("*checkpoint*"))


@pytest.mark.parametrize("point, resumed_at", [
    ("checkpoint_written:3", 3072),  # just after the third checkpoint (step 24, inside a loss window)
    ("checkpoint_writing:4", 3072),  # halfway through writing the fourth (step 32, at an evaluation)
])
def test_kill__the_rerun_resumes_from_the_last_checkpoint_and_ends_bit_identical(tmp_path, caplog, point, resumed_at):
    spec = {"train": TRAIN}
    killed_at(point, [(tmp_path / "killed", spec)])
    assert (tmp_path / "killed" / record.CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "killed" / record.SUMMARY_FILE).exists()
    if point.startswith("checkpoint_writing"):
        assert list((tmp_path / "killed").glob(".checkpoint*.tmp"))  # the half-written file is left behind

    with caplog.at_level(logging.INFO, logger="sae_sweep"):
        summary = run(build_cfg(**spec), tmp_path / "killed")
    assert f"resuming from the checkpoint at sample {resumed_at}" in caplog.text
    assert summary["status"] == "completed" and summary["samples"] == 8192
    run(build_cfg(**spec), tmp_path / "whole")
    assert_same_record(tmp_path / "killed", tmp_path / "whole")
    assert no_checkpoint_left(tmp_path / "killed") and no_checkpoint_left(tmp_path / "whole")


PACK = [  # J, alpha and seed differ; the last member diverges at its first step and stays stopped
    {"alpha": 0.1, "dict_size": 32, "seed": 0}, {"alpha": 1.0, "dict_size": 64, "seed": 1},
    {"alpha": 0.3, "dict_size": 48, "seed": 0}, {"alpha": 0.3, "dict_size": 32, "seed": 2, "sae": {"init_scale": 1e30}},
]


@pytest.mark.parametrize("stacked", ["auto", "never"])  # small SAEs: one padded stacked group, or member by member
def test_packed_members__killed_between_two_members_writes_each_resume_from_the_round_they_all_have(
        tmp_path, caplog, stacked):
    specs = [{**m, "train": {**TRAIN, "lanes": 2, "stacked": stacked}} for m in PACK]
    # The second round (step 16) dies after two of its four members replaced their checkpoint.
    killed_at("checkpoint_replacing:5", [(tmp_path / f"killed_{i}", s) for i, s in enumerate(specs)])

    with caplog.at_level(logging.INFO, logger="sae_sweep"):
        out = run_packed([Job(build_cfg(**s), tmp_path / f"killed_{i}") for i, s in enumerate(specs)])
    assert "resuming from the checkpoint at sample 1024" in caplog.text  # round one: the one all four have
    assert [s["status"] for s in out] == ["completed"] * 3 + ["diverged"]
    run_packed([Job(build_cfg(**s), tmp_path / f"whole_{i}") for i, s in enumerate(specs)])
    for i in range(len(specs)):
        if i < 3:
            assert_same_record(tmp_path / f"killed_{i}", tmp_path / f"whole_{i}")
        else:
            a, b = bits(tmp_path / f"killed_{i}" / record.WEIGHTS_FILE), bits(tmp_path / f"whole_{i}" / record.WEIGHTS_FILE)
            assert all(torch.equal(a[k], b[k]) for k in a)
            assert rows(tmp_path / f"killed_{i}") == rows(tmp_path / f"whole_{i}") == []
        assert no_checkpoint_left(tmp_path / f"killed_{i}")


def _flip_a_weight_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "a flipped byte": lambda d: [_flip_a_weight_byte(d / f) for f in (record.CHECKPOINT_FILE, record.CHECKPOINT_PREVIOUS_FILE)],
    "truncated": lambda d: [(d / f).write_bytes((d / f).read_bytes()[:1000])
                            for f in (record.CHECKPOINT_FILE, record.CHECKPOINT_PREVIOUS_FILE)],
    "not safetensors": lambda d: [(d / f).write_text("{}") for f in (record.CHECKPOINT_FILE, record.CHECKPOINT_PREVIOUS_FILE)],
    "metrics rows lost": lambda d: (d / record.METRICS_FILE).write_text(""),
}


def _kept_checkpoint(run_dir: Path, **spec) -> None:
    """A run dir as a kill leaves it: the run's checkpoints (at samples 7168 and 6144), no summary."""
    run(build_cfg(**{**spec, "train": {**TRAIN, "keep_checkpoint": True}}), run_dir)
    (run_dir / record.SUMMARY_FILE).unlink()


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupt_checkpoint__is_ignored_with_one_line_and_the_run_starts_over(tmp_path, caplog, damage):
    _kept_checkpoint(tmp_path / "run")
    CORRUPTIONS[damage](tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="sae_sweep"):
        assert run(build_cfg(train=TRAIN), tmp_path / "run")["status"] == "completed"
    assert "checkpoint ignored" in caplog.text and "resuming" not in caplog.text
    run(build_cfg(train=TRAIN), tmp_path / "whole")
    assert_same_record(tmp_path / "run", tmp_path / "whole")
    assert no_checkpoint_left(tmp_path / "run")


def test_damaged_last_checkpoint__the_run_resumes_from_the_one_before(tmp_path, caplog):
    _kept_checkpoint(tmp_path / "run")
    _flip_a_weight_byte(tmp_path / "run" / record.CHECKPOINT_FILE)
    with caplog.at_level(logging.INFO, logger="sae_sweep"):
        run(build_cfg(train=TRAIN), tmp_path / "run")
    assert "checkpoint ignored" in caplog.text and "SHA-256" in caplog.text
    assert "resuming from the checkpoint at sample 6144" in caplog.text
    run(build_cfg(train=TRAIN), tmp_path / "whole")
    assert_same_record(tmp_path / "run", tmp_path / "whole")


def test_checkpoint_of_another_config__is_ignored_and_the_run_starts_over(tmp_path, caplog):
    _kept_checkpoint(tmp_path / "run", alpha=0.3)
    with caplog.at_level(logging.INFO, logger="sae_sweep"):
        run(build_cfg(alpha=1.0, train=TRAIN), tmp_path / "run")
    assert "taken of another config" in caplog.text and "resuming" not in caplog.text
    run(build_cfg(alpha=1.0, train=TRAIN), tmp_path / "whole")
    assert_same_record(tmp_path / "run", tmp_path / "whole")


def test_checkpoints__are_deleted_when_the_run_ends_unless_kept(tmp_path):
    run(build_cfg(train=TRAIN), tmp_path / "default")
    assert no_checkpoint_left(tmp_path / "default")
    run(build_cfg(train={**TRAIN, "keep_checkpoint": True}), tmp_path / "kept")
    assert (tmp_path / "kept" / record.CHECKPOINT_FILE).is_file()
    run(build_cfg(train={**TRAIN, "checkpoint_every": 0, "keep_checkpoint": True}), tmp_path / "off")
    assert no_checkpoint_left(tmp_path / "off")


@pytest.mark.parametrize("field, value, message", [
    ("checkpoint_every", -1, "train.checkpoint_every must be an integer >= 0 (samples; 0 = no checkpoints), got -1"),
    ("checkpoint_every", 1.5, "train.checkpoint_every must be an integer >= 0"),
    ("keep_checkpoint", "yes", "train.keep_checkpoint must be true or false, got 'yes'"),
])
def test_config__bad_checkpoint_settings_name_the_field(field, value, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{field: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def _activation_file(tmp_path: Path, rows: int = 3000, n: int = 8) -> Path:
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).standard_normal((rows, n)).astype(np.float16))
    return path


def test_streams__continue_from_a_position_exactly_across_chunk_groups_and_epochs(tmp_path):
    shards = ActivationShards(ActivationsDataConfig(path=str(_activation_file(tmp_path)), eval_size=200,
                                                    chunk_rows=300, shuffle_chunks=2))
    toy = ToyFeatures(build_cfg().data)
    for source, batch in ((shards, 96), (toy, 64)):
        stream = source.batches(batch, 3)
        for k in range(1, 70):  # 2800 training rows: several groups of 600 rows and 2 epochs of 96-row batches
            next(stream)
            if k % 7:
                continue
            again = source.batches(batch, 3, json.loads(json.dumps(stream.position())))
            for _ in range(3):
                assert torch.equal(next(again), next(stream))


def test_activation_run__resumes_bit_identical(tmp_path, caplog):
    data = {"kind": "activations", "path": str(_activation_file(tmp_path, rows=5000, n=16)), "eval_size": 512,
            "chunk_rows": 1000, "shuffle_chunks": 2}
    cfg = build_cfg(train={**TRAIN, "keep_checkpoint": True})
    cfg.data = ActivationsDataConfig(**{k: v for k, v in data.items() if k != "kind"})
    run(cfg, tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    (tmp_path / "again" / record.SUMMARY_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="sae_sweep"):
        run(cfg, tmp_path / "again")  # takes the last eight steps again
    assert "resuming from the checkpoint at sample 7168" in caplog.text
    assert_same_record(tmp_path / "again", tmp_path / "run")


# The real CLI: a single run and a packed grid, each SIGKILLed (os._exit) right after its second
# checkpoint's rename, then the same command again, against the same command run whole elsewhere.
CLI = [*SMOKE, "data.n=16", "data.h=32", "dict_size=32", "train.batch_size=128", "train.num_samples=4096",
       "train.eval_every=2048", "train.checkpoint_every=1024", "train.threads=1", "data.eval_size=512"]


def _cli_run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").rglob(record.CONFIG_FILE) if p.parent.name != ".hydra")


@pytest.mark.parametrize("args", [[], ["-m", "hydra/launcher=packed", "alpha=0.3,1.0"]], ids=["single", "packed"])
def test_cli__a_killed_run_resumes_bit_identical(tmp_path, args):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    killed.mkdir(), whole.mkdir()
    flags, overrides = [a for a in args if a == "-m"], [a for a in args if a != "-m"]
    command = [*flags, *CLI, *overrides]
    res = run_cli(*command, cwd=killed, env={KILL_ENV: "checkpoint_written:2"})
    assert res.returncode == KILLED, res.stderr[-3000:]
    assert all((d / record.CHECKPOINT_FILE).is_file() for d in _cli_run_dirs(killed))
    res = run_cli(*command, cwd=killed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert run_cli(*command, cwd=whole).returncode == 0
    resumed, fresh = _cli_run_dirs(killed), _cli_run_dirs(whole)
    assert len(resumed) == len(fresh) == (2 if flags else 1)  # the single run continued in its killed dir
    for a, b in zip(resumed, fresh, strict=True):
        assert_same_record(a, b)
        assert no_checkpoint_left(a)


@pytest.mark.parametrize("keep, launcher", [(False, []), (True, []), (False, ["hydra/launcher=packed"])],
                         ids=["removed", "kept", "packed"])
def test_cli__a_grid_cell_killed_between_its_summary_and_its_checkpoints_removal_is_cleaned_not_retrained(
        tmp_path, keep, launcher):
    command = ["-m", *CLI, *launcher, "alpha=0.3,1.0", f"train.keep_checkpoint={str(keep).lower()}"]
    res = run_cli(*command, cwd=tmp_path, env={KILL_ENV: "summary_written"})
    assert res.returncode == KILLED, res.stderr[-3000:]
    (first,) = [d for d in _cli_run_dirs(tmp_path) if (d / record.SUMMARY_FILE).is_file()]
    assert (first / record.CHECKPOINT_FILE).is_file()  # the window: a finished record, its checkpoints left
    summary = (first / record.SUMMARY_FILE).read_text()
    res = run_cli(*command, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (first / record.SUMMARY_FILE).read_text() == summary  # not retrained
    assert (first / record.CHECKPOINT_FILE).is_file() is keep  # kept only when asked
    assert len(_cli_run_dirs(tmp_path)) == 2


# A grid cell that fails after writing a checkpoint. Diverged (train.lr=1e30: step 1's loss is finite, step 2's
# is not; a checkpoint every step): it is over, its checkpoints go unless kept. Raised (SAE_SWEEP_RAISE_AT at
# its first checkpoint): the failed record is written and the checkpoint kept, for the re-run that retries the
# cell to resume from; the completed cell is not retrained.
EVERY_STEP = [*(a for a in CLI if not a.startswith("train.checkpoint_every=")), "train.checkpoint_every=128"]


def _by_status(cwd: Path) -> dict[str, Path]:
    return {json.loads((d / record.SUMMARY_FILE).read_text())["status"]: d for d in _cli_run_dirs(cwd)}


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_cli__a_grid_cell_diverging_after_a_checkpoint_is_recorded_and_its_checkpoints_removed_unless_kept(
        tmp_path, keep):
    res = run_cli("-m", *EVERY_STEP, "train.lr=0.001,1e30", f"train.keep_checkpoint={str(keep).lower()}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    cells = _by_status(tmp_path)
    assert sorted(cells) == ["completed", "diverged"]
    summary = json.loads((cells["diverged"] / record.SUMMARY_FILE).read_text())
    assert summary["message"].endswith("at sample 256")  # step 2: after step 1's checkpoint
    assert (cells["diverged"] / record.CHECKPOINT_FILE).is_file() is keep  # kept: one was written before step 2
    assert no_checkpoint_left(cells["completed"]) is not keep


def test_cli__a_grid_cell_raising_after_a_checkpoint_keeps_it_and_the_rerun_resumes_the_cell_from_it(tmp_path):
    command = ["-m", *CLI, "alpha=0.3,1.0"]
    res = run_cli(*command, cwd=tmp_path, env={RAISE_ENV: "checkpoint_written:1"})  # the first cell's first
    assert res.returncode == 0, res.stderr[-3000:]  # one failed cell of two: within the budget
    cells = _by_status(tmp_path)
    assert sorted(cells) == ["completed", "failed"]
    failed, completed = cells["failed"], cells["completed"]
    message = json.loads((failed / record.SUMMARY_FILE).read_text())["message"]
    assert message.startswith("InjectedFailure: ") and "checkpoint_written" in message
    assert (failed / record.CHECKPOINT_FILE).is_file() and no_checkpoint_left(completed)
    done = (completed / record.SUMMARY_FILE).read_text()

    res = run_cli(*command, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = res.stdout + res.stderr + "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    assert "resuming from the checkpoint at sample 1024" in logs
    assert json.loads((failed / record.SUMMARY_FILE).read_text())["status"] == "completed"
    assert (completed / record.SUMMARY_FILE).read_text() == done  # not retrained
    assert no_checkpoint_left(failed) and len(_cli_run_dirs(tmp_path)) == 2
