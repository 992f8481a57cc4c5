"""benchmarks/bench_faults.py's audit on hand-made sweep dirs: it sees every fault it counts.

The benchmark reports all zeros on a healthy sweep (tests/e2e/test_bench_faults.py); these tests show
that a lost, duplicated, retrained, stranded or inconsistent cell does not read as zero.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from benchmarks.bench_faults import AXES, COUNTS, all_cells, audit_grid, audit_optuna, remember
from sae_sweep.record import file_digest, write_json_atomic
from sae_sweep.table import write_results_table

ZERO = dict.fromkeys(COUNTS, 0)


def counts(findings: dict[str, dict[str, list[str]]]) -> dict[str, int]:
    return {k: len(v) for k, v in findings.items()}


def write_record(run_dir: Path, mmcs: float) -> None:
    (run_dir / "metrics.jsonl").write_text('{"samples": 100}\n')
    write_json_atomic(run_dir / "summary.json", {"status": "completed", "mmcs": mmcs, "samples": 100,
                                                 "files": {"metrics.jsonl": file_digest(run_dir / "metrics.jsonl")}})


def finished_sweep(sweep_dir: Path, prefix: str = "cell") -> list[Path]:
    """Every cell of the benchmark's grid with a complete record, and the results table: as a sweep ends."""
    dirs = []
    for i, cell in enumerate(all_cells()):
        d = sweep_dir / f"{prefix}_{i:05d}"
        d.mkdir(parents=True)
        write_json_atomic(d / "cell.json", {"cell_key": f"key{i}", "trial": i if prefix == "trial" else None,
                                            "overrides": ["experiment=smoke", *(f"{k}={v}" for k, v in cell)],
                                            "started_at": 1.8e9 + i})
        write_record(d, 0.5 + i / 100)
        dirs.append(d)
    (sweep_dir / "multirun.yaml").write_text("{}\n")
    write_results_table(sweep_dir)
    return dirs


def test_audit_grid__a_finished_sweep_counts_nothing(tmp_path: Path) -> None:
    finished_sweep(tmp_path)
    assert counts(audit_grid(tmp_path, {})) == ZERO


def test_audit_grid__a_cell_without_record_is_lost_and_a_cell_in_two_dirs_duplicated(tmp_path: Path) -> None:
    dirs = finished_sweep(tmp_path)
    (dirs[0] / "summary.json").unlink()  # killed before its record, never run again
    shutil.copytree(dirs[1], tmp_path / "cell_00001~again")  # run a second time in a dir of its own
    write_results_table(tmp_path)
    f = audit_grid(tmp_path, {})
    assert counts(f) == {**ZERO, "lost": 1, "duplicated": 1}
    assert list(f["lost"]) == ["alpha=0.1 dict_size=16 seed=0"]


def test_audit_grid__a_cell_trained_again_after_a_kill_is_retrained(tmp_path: Path) -> None:
    dirs = finished_sweep(tmp_path)
    seen: dict[str, tuple] = {}
    remember(seen, tmp_path)  # what a kill left
    write_record(dirs[2], 0.9)  # the re-run trained the finished cell again
    write_results_table(tmp_path)
    assert counts(audit_grid(tmp_path, seen)) == {**ZERO, "retrained": 1}


def test_audit_grid__temp_files_checkpoints_of_finished_cells_and_foreign_dirs_are_stranded(tmp_path: Path) -> None:
    dirs = finished_sweep(tmp_path)
    (dirs[0] / ".summary.json.123.tmp").write_text("{")
    (dirs[1] / "checkpoint.safetensors").write_bytes(b"")
    (tmp_path / "trial_00009").mkdir()
    (tmp_path / "trial_00009" / "trial.json").write_text("{}")
    assert counts(audit_grid(tmp_path, {})) == {**ZERO, "stranded": 3}


def test_audit_grid__a_table_row_that_disagrees_with_its_summary_is_inconsistent(tmp_path: Path) -> None:
    dirs = finished_sweep(tmp_path)
    write_record(dirs[3], 0.1)  # after the table was written
    assert counts(audit_grid(tmp_path, {})) == {**ZERO, "inconsistent": 1}


def study_of(sweep_dir: Path) -> optuna.Study:
    return optuna.create_study(study_name="smoke", storage=f"sqlite:///{sweep_dir / 'optuna.db'}",
                               direction="maximize")


def add_trial(study: optuna.Study, cell: tuple, run_dir: Path, value: float) -> None:
    study.add_trial(create_trial(params=dict(cell), value=value, user_attrs={"run_dir": str(run_dir)},
                                 distributions={k: CategoricalDistribution(v) for k, v in AXES.items()}))


def test_audit_optuna__a_finished_study_counts_nothing_and_a_running_trial_or_a_second_complete_one_does_not(
        tmp_path: Path) -> None:
    dirs = finished_sweep(tmp_path, prefix="trial")
    study = study_of(tmp_path)
    for i, cell in enumerate(all_cells()):
        add_trial(study, cell, dirs[i], 0.5 + i / 100)
    assert counts(audit_optuna(tmp_path, {})) == ZERO

    add_trial(study, all_cells()[0], dirs[0], 0.5)  # the same grid point completed twice
    study.ask()  # left RUNNING
    assert counts(audit_optuna(tmp_path, {})) == {**ZERO, "duplicated": 1, "stranded": 1}


def test_audit_optuna__a_grid_point_without_a_complete_trial_is_lost(tmp_path: Path) -> None:
    dirs = finished_sweep(tmp_path, prefix="trial")
    study = study_of(tmp_path)
    for i, cell in enumerate(all_cells()[:-1]):
        add_trial(study, cell, dirs[i], 0.5 + i / 100)
    study.add_trial(create_trial(state=TrialState.FAIL, params=dict(all_cells()[-1]),
                                 distributions={k: CategoricalDistribution(v) for k, v in AXES.items()}))
    f = audit_optuna(tmp_path, {})
    assert counts(f) == {**ZERO, "lost": 2}  # the grid point, and the failed trial that counts toward n_trials
    assert set(f["lost"]) == {"alpha=0.3 dict_size=32 seed=1", "trial 7"}


def test_audit_wandb__a_complete_cell_with_only_a_killed_attempts_wandb_run_is_lost_and_stranded(tmp_path: Path) -> None:
    from benchmarks.bench_faults import audit_wandb, new_findings

    dirs = finished_sweep(tmp_path)
    f = new_findings()
    audit_wandb(tmp_path, f)
    assert counts(f) == {**ZERO, "lost": len(dirs)}  # no W&B run at all: every cell's mirror is lost
    killed = dirs[0] / "wandb" / "offline-run-20261203_120000-abc123"
    killed.mkdir(parents=True)
    (killed / "run-abc123.wandb").write_bytes(b"")  # a kill before its first record: no exit record
    f = new_findings()
    audit_wandb(tmp_path, f)
    assert counts(f) == {**ZERO, "lost": len(dirs), "stranded": 1}
