"""Refinement of a grid around its estimates: the proposal rule on planted inputs, the record and its
resume with a stand-in launcher, and the real CLI end to end on a tiny toy sweep (one shared grid of
6 runs of 60 K samples; each test refines its own copy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from sae_sweep.analysis.refinement import (
    DatasetPlan,
    plan_round,
    propose_alpha,
    propose_dict_sizes,
    refined_cells,
)
from sae_sweep.kill import KILL_ENV
from sae_sweep.record import REFINEMENT_FILE as RECORD_FILE
from sae_sweep.refine import main
from sae_sweep.sweep.refine import analysis_overrides, dataset_overrides, refine, round_commands
from tests.sweep_helpers import cli_env, ok, table

GRID = ["experiment=quickstart", "train.num_samples=60000", "train.eval_every=30000", "dict_size=16,32,64",
        "alpha=0.3", "seed=0,1", "logger.wandb.mode=disabled", "train.threads=1", "train.progress=false",
        "data.eval_size=1024", "hydra.callbacks.report.refine_rounds=0"]


# --- the proposal rule ---------------------------------------------------------------------------
def test_propose_dict_sizes__estimate_on_a_grid_point_adds_the_midpoints_to_both_neighbours():
    assert propose_dict_sizes([16, 32, 64], [32.0]) == [23, 45]  # round(sqrt(16*32)), round(sqrt(32*64))


def test_propose_dict_sizes__estimate_between_grid_points_adds_their_midpoint():
    assert propose_dict_sizes([32, 64, 128], [48.0]) == [45]
    assert propose_dict_sizes([96, 192], [144.0]) == [136]


def test_propose_dict_sizes__estimate_at_either_end_adds_the_one_inner_midpoint():
    assert propose_dict_sizes([16, 32, 64], [16.0]) == [23]
    assert propose_dict_sizes([16, 32, 64], [64.0]) == [45]


def test_propose_dict_sizes__null_nan_and_off_grid_values_add_nothing():
    assert propose_dict_sizes([16, 32, 64], [None, float("nan"), 8.0, 100.0]) == []


def test_propose_dict_sizes__signals_are_pooled_and_each_new_j_appears_once():
    assert propose_dict_sizes([64, 32, 16, 32], [32.0, 40.0, 64.0, None]) == [23, 45]


def test_propose_dict_sizes__midpoints_that_round_onto_the_grid_are_dropped():
    assert propose_dict_sizes([16, 17, 18], [17.0]) == []  # 16.49 -> 16, 17.49 -> 17


def test_propose_alpha__best_at_the_smallest_alpha_adds_one_geometric_step_below():
    assert propose_alpha([0.3, 0.1, 1.0], 0.1) == [0.0333]


def test_propose_alpha__best_at_the_largest_alpha_adds_one_geometric_step_above():
    assert propose_alpha([0.1, 0.3, 1.0], 1.0) == [3.33]
    assert propose_alpha([0.01, 0.1], 0.1) == [1.0]


def test_propose_alpha__inner_best_missing_best_or_one_alpha_add_nothing():
    assert propose_alpha([0.1, 0.3, 1.0], 0.3) == []
    assert propose_alpha([0.1, 0.3, 1.0], None) == []
    assert propose_alpha([0.3], 0.3) == []


def test_propose_alpha__a_zero_alpha_has_no_step_below_it_but_the_top_edge_still_extends():
    assert propose_alpha([0.0, 0.1, 0.3], 0.0) == []
    assert propose_alpha([0.0, 0.1, 0.3], 0.3) == [0.9]


def test_analysis_overrides__pass_on_the_thresholds_that_differ_from_the_defaults():
    settings = {"basin_tolerance": 0.05, "reproduce_cos": 0.9, "min_agreement": 0.85, "label": "x"}
    assert analysis_overrides(settings) == ["++hydra.callbacks.report.basin_tolerance=0.05",
                                            "++hydra.callbacks.report.min_agreement=0.85"]


def test_propose_alpha__a_step_that_rounds_onto_the_grid_adds_nothing():
    assert propose_alpha([0.1, 0.10001], 0.1) == []  # 0.09999 has 3 significant digits 0.1


def _cells(grid: dict[int, list[int]], alphas: list[float], seeds: tuple[int, ...] = (0, 1)) -> pd.DataFrame:
    """Completed cells of a planted sweep over data.h: {h: [J, ...]}."""
    rows = [{"alpha": a, "dict_size": j, "seed": s, "data.h": h, "status": "completed"}
            for h, js in grid.items() for j in js for a in alphas for s in seeds]
    return pd.DataFrame(rows)


def _group(label: dict, values: dict[str, float | None], best: float | None = None) -> dict:
    g = {"label": label, "true_h": None, "estimates": [{"signal": k, "value": v} for k, v in values.items()]}
    if best is not None:
        g["alpha_selection"] = {"used": [], "excluded": {}, "best": best}
    return g


def test_plan_round__one_plan_per_dataset_with_its_own_grid_estimates_and_best_alpha():
    cells = _cells({32: [16, 32, 64], 64: [32, 64, 128]}, [0.1, 0.3])
    estimates = {"groups": [
        _group({"data.h": 32}, {"dead_latents": 32.0, "loss_basin": None}, best=0.1),
        _group({"data.h": "64"}, {"dead_latents": 128.0, "loss_basin": 96.0}),  # labels may come back as text
    ]}
    by = {p.dataset: p for p in plan_round(estimates, cells)}
    assert set(by) == {"data.h=32", "data.h=64"}
    assert by["data.h=32"].added_dict_sizes == [23, 45] and by["data.h=32"].added_alphas == [0.0333]
    assert by["data.h=32"].label == {"data.h": 32} and by["data.h=32"].seeds == [0, 1]
    # No alpha_selection: the alpha edge is not judged.
    assert by["data.h=64"].added_dict_sizes == [91] and by["data.h=64"].added_alphas == []
    assert by["data.h=64"].grid_alphas == [0.1, 0.3]


def test_plan_round__a_grid_whose_estimates_are_all_null_proposes_nothing():
    (plan,) = plan_round({"groups": [_group({}, {"dead_latents": None})]}, _cells({64: [32, 64]}, [0.3]))
    assert plan.empty and plan.dataset == "all"


# --- commands ------------------------------------------------------------------------------------
def test_dataset_overrides__pin_the_axes_and_the_dataset_keep_everything_else():
    task = ["experiment=calibration", "+data.h=32,64", "dict_size=16,32", "alpha=0.1,0.3", "seed=0,1",
            "train.lr=0.003", "name=cal"]
    assert dataset_overrides(task, {"data.h": 64}) == ["experiment=calibration", "train.lr=0.003", "name=cal",
                                                       "+data.h=64"]


def test_round_commands__new_j_at_every_alpha_then_the_new_alpha_at_every_j(tmp_path):
    plan = DatasetPlan(dataset="data.h=64", label={"data.h": 64}, grid_dict_sizes=[32, 64, 128],
                       grid_alphas=[0.1, 0.3], seeds=[0, 1], estimates={"dead_latents": 64.0}, best_alpha=0.3,
                       added_dict_sizes=[45, 91], added_alphas=[0.9])
    first, second = round_commands([plan], ["experiment=quickstart", "dict_size=32,64,128"], tmp_path,
                                   ["hydra/launcher=packed"], ["++hydra.callbacks.report.basin_tolerance=0.05"],
                                   python="python")
    head = ["python", "-m", "sae_sweep", "-m", "experiment=quickstart", "data.h=64",
            "++hydra.callbacks.report.basin_tolerance=0.05", f"hydra.sweep.dir={tmp_path.resolve()}"]
    assert first == [*head, "dict_size=45,91", "alpha=0.1,0.3", "seed=0,1", "hydra.callbacks.report.enabled=false",
                     "hydra/launcher=packed"]
    assert second == [*head, "alpha=0.9", "dict_size=32,45,64,91,128", "seed=0,1", "hydra/launcher=packed"]
    assert set(plan.cells()) == {(a, j) for a in (0.1, 0.3) for j in (45, 91)} | {(0.9, j) for j in (32, 45, 64, 91, 128)}


# --- the record, with a stand-in launcher --------------------------------------------------------
def _plant_cell(sweep_dir: Path, alpha: float, j: int, seed: int) -> None:
    d = sweep_dir / f"alpha={alpha},dict_size={j},seed={seed}"
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"cell_key": f"{alpha}-{j}-{seed}", "started_at": 0.0,
                                             "overrides": [f"alpha={alpha}", f"dict_size={j}", f"seed={seed}"]}))
    (d / "summary.json").write_text(json.dumps({"status": "completed", "alpha": alpha, "dict_size": j, "seed": seed}))


def _plant_sweep(sweep_dir: Path, js: list[int], value: float | None, best: float | None = None) -> None:
    for j in js:
        for a in (0.1, 0.3):
            _plant_cell(sweep_dir, a, j, 0)
    OmegaConf.save(OmegaConf.create({"hydra": {
        "overrides": {"task": ["experiment=quickstart", f"dict_size={','.join(map(str, js))}", "alpha=0.1,0.3"]},
        "runtime": {"cwd": str(sweep_dir.parent)}, "sweeper": {"_target_": "SaeGridSweeper"}}}),
        sweep_dir / "multirun.yaml")
    _write_estimates(sweep_dir, value, best)


def _write_estimates(sweep_dir: Path, value: float | None, best: float | None = None) -> None:
    blob = {"settings": {"basin_tolerance": 0.04}, "groups": [_group({}, {"dead_latents": value}, best)]}
    (sweep_dir / "estimates.json").write_text(json.dumps(blob))


class FakeLauncher:
    """Stands in for the multiruns: plants the commanded cells and rewrites estimates.json."""

    def __init__(self, sweep_dir: Path, estimates: list[float | None], code: int = 0) -> None:
        self.sweep_dir, self.estimates, self.code, self.calls = sweep_dir, list(estimates), code, []

    def __call__(self, cmd: list[str], cwd: Path | None) -> int:
        self.calls.append(cmd)
        if self.code:
            return self.code
        axes = {o.split("=")[0]: o.split("=")[1].split(",") for o in cmd if o.split("=")[0] in ("alpha", "dict_size")}
        for a in axes["alpha"]:
            for j in axes["dict_size"]:
                if not (self.sweep_dir / f"alpha={float(a)},dict_size={int(j)},seed=0").exists():
                    _plant_cell(self.sweep_dir, float(a), int(j), 0)
        _write_estimates(self.sweep_dir, self.estimates.pop(0))
        return 0


def test_refine__each_round_reads_the_estimates_the_last_one_wrote_and_stops_when_nothing_is_new(tmp_path):
    sweep = tmp_path / "s"
    _plant_sweep(sweep, [16, 32, 64], 32.0, best=0.3)
    launcher = FakeLauncher(sweep, [27.0, 27.0, None])  # what each multirun's analysis will say
    assert refine(sweep, rounds=3, runner=launcher, log=lambda s: None) == 0
    record = json.loads((sweep / RECORD_FILE).read_text())
    assert [r["status"] for r in record["rounds"]] == ["finished", "finished"]  # round 3: nothing new
    (d1,), (d2,) = (r["datasets"] for r in record["rounds"])
    assert (d1["added_dict_sizes"], d1["added_alphas"]) == ([23, 45], [0.9])  # best alpha 0.3 is the largest
    assert len(record["rounds"][0]["commands"]) == 2
    assert d2["grid_dict_sizes"] == [16, 23, 32, 45, 64] and d2["grid_alphas"] == [0.1, 0.3, 0.9]
    assert d2["estimates"] == {"dead_latents": 27.0} and d2["added_dict_sizes"] == [27]  # between 23 and 32
    assert len(launcher.calls) == 3
    assert record["task_overrides"][1] == "dict_size=16,32,64"  # the original sweep's, not a round's
    cells = refined_cells(sweep)
    assert list(cells.columns) == ["dataset", "alpha", "dict_size", "round"]
    assert len(cells) == len(cells.drop_duplicates(["alpha", "dict_size"]))
    assert set(cells[cells["round"] == 1]["dict_size"]) == {16, 23, 32, 45, 64}  # alpha 0.9 at every J
    assert set(cells[cells["round"] == 2]["alpha"]) == {0.1, 0.3, 0.9} and len(cells) == 4 + 5 + 3


def test_refine__a_failed_multirun_leaves_the_round_started_and_a_rerun_repeats_its_commands(tmp_path, capsys):
    sweep = tmp_path / "s"
    _plant_sweep(sweep, [16, 32, 64], 64.0)
    failing = FakeLauncher(sweep, [], code=3)
    assert refine(sweep, runner=failing, log=lambda s: None) == 1
    assert "exit code 3" in capsys.readouterr().err
    (rnd,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd["status"] == "started" and rnd["returncodes"] == [3]
    _write_estimates(sweep, 16.0)  # whatever the estimates say now, the started round is not re-proposed
    launcher = FakeLauncher(sweep, [45.0])
    assert refine(sweep, runner=launcher, log=lambda s: None) == 0
    assert launcher.calls == failing.calls == [rnd["commands"][0]]
    (rnd,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd["status"] == "finished" and rnd["datasets"][0]["added_dict_sizes"] == [45]


def test_refine__dry_run_and_nothing_to_propose_write_nothing(tmp_path):
    sweep = tmp_path / "s"
    _plant_sweep(sweep, [16, 32, 64], 32.0)
    lines: list[str] = []
    launcher = FakeLauncher(sweep, [])
    assert refine(sweep, dry_run=True, runner=launcher, log=lines.append) == 0
    assert not launcher.calls and not (sweep / RECORD_FILE).exists()
    assert "dict_size=23,45" in lines[-1] and "alpha=0.1,0.3" in lines[-1]
    _write_estimates(sweep, None)
    assert refine(sweep, runner=launcher, log=lines.append) == 0
    assert not launcher.calls and not (sweep / RECORD_FILE).exists() and "nothing new" in lines[-1]


def test_refined_cells__no_record_is_an_empty_table(tmp_path):
    cells = refined_cells(tmp_path)
    assert cells.empty and list(cells.columns) == ["dataset", "alpha", "dict_size", "round"]


# --- bad input -----------------------------------------------------------------------------------
def _bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("sae_sweep.refine: error: "), err
    return err


def test_cli__bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    sweep = tmp_path / "s"
    _plant_sweep(sweep, [16, 32, 64], 32.0)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert "--rounds 4 must be" in _bad([str(sweep), "--rounds", "4"], capsys)
    assert "--rounds 0 must be" in _bad([str(sweep), "--rounds", "0"], capsys)
    assert "invalid int value" in _bad([str(sweep), "--rounds", "two"], capsys)
    assert "is not a directory" in _bad([str(tmp_path / "missing")], capsys)
    assert "estimates.json" in _bad([str(tmp_path)], capsys)  # a dir that is no sweep
    (sweep / "trial_00000").mkdir()
    assert "is an Optuna study (trial_00000)" in _bad([str(sweep)], capsys)
    (sweep / "trial_00000").rmdir()
    (sweep / "optuna.db").write_text("")
    assert "is an Optuna study (optuna.db)" in _bad([str(sweep)], capsys)
    (sweep / "optuna.db").unlink()
    (sweep / "multirun.yaml").unlink()
    assert "multirun.yaml" in _bad([str(sweep)], capsys)
    (sweep / "estimates.json").write_text("{")
    assert "must be JSON" in _bad([str(sweep)], capsys)
    _write_estimates(sweep, 32.0)
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": ["experiment=quickstart"]},
                                               "sweeper": {"_target_": "SaeOptunaSweeper"}}}), sweep / "multirun.yaml")
    assert "is an Optuna study (multirun.yaml)" in _bad([str(sweep)], capsys)
    assert not (sweep / RECORD_FILE).exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --- the real CLI --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny grid, swept once; tests refine copies of it."""
    sweep_dir = tmp_path_factory.mktemp("refine") / "coarse"
    ok(subprocess.run([sys.executable, "-m", "sae_sweep", "-m", *GRID, f"hydra.sweep.dir={sweep_dir}"],
                      cwd=sweep_dir.parent, env=cli_env(), capture_output=True, text=True, timeout=300))
    return sweep_dir


def _copy(coarse: Path, dest: Path) -> Path:
    shutil.copytree(coarse, dest)  # copy2: the summaries keep their mtimes
    return dest


def _refine(sweep_dir: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env() | ({KILL_ENV: kill_at} if kill_at else {})
    return subprocess.run([sys.executable, "-m", "sae_sweep.refine", str(sweep_dir), *args], cwd=sweep_dir.parent,
                          env=env, capture_output=True, text=True, timeout=300)


def _mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}


def _expected_new_j(sweep_dir: Path) -> list[int]:
    (group,) = json.loads((sweep_dir / "estimates.json").read_text())["groups"]
    new = propose_dict_sizes([16, 32, 64], [e["value"] for e in group["estimates"]])
    assert new, group["estimates"]  # the tiny grid must give the rule something to refine
    return new


def test_cli__refine_adds_the_new_j_at_the_grid_alpha_and_a_rerun_adds_nothing(coarse, tmp_path):
    sweep = _copy(coarse, tmp_path / "qs")
    new_j, before = _expected_new_j(sweep), _mtimes(sweep)
    blob = json.loads((sweep / "estimates.json").read_text())
    blob["settings"]["basin_tolerance"] = 0.05  # as if re-analysed with another threshold
    (sweep / "estimates.json").write_text(json.dumps(blob))
    proc = ok(_refine(sweep))
    df = table(sweep)
    # The recipe's hydra.sweeper.params (J up to 128, alpha 0.1 and 1) lose to the refine's command line.
    assert sorted(df["dict_size"].unique()) == sorted({16, 32, 64, *new_j}) and set(df["alpha"]) == {0.3}
    assert len(df) == 2 * (3 + len(new_j)) and df["cell_key"].is_unique and (df["status"] == "completed").all()
    after = _mtimes(sweep)
    assert {k: after[k] for k in before} == before  # the coarse cells were not run again
    record = json.loads((sweep / RECORD_FILE).read_text())
    (rnd,) = record["rounds"]
    assert rnd["status"] == "finished" and rnd["datasets"][0]["added_dict_sizes"] == new_j
    # Hydra keeps hydra.* overrides apart from the task's (the refine passes its own refine_rounds=0).
    assert record["task_overrides"] == [g for g in GRID if not g.startswith("hydra.")]
    assert "dict_size=" + ",".join(map(str, new_j)) in proc.stdout
    cells = refined_cells(sweep)
    assert sorted(cells["dict_size"]) == new_j and set(cells["round"]) == {1} and set(cells["dataset"]) == {"all"}
    # Refinement's own analysis rewrote the estimates over the refined grid, with the same thresholds.
    blob = json.loads((sweep / "estimates.json").read_text())
    assert blob["groups"][0]["cells"] == len(df) and blob["settings"]["basin_tolerance"] == 0.05

    again = ok(_refine(sweep))
    assert "asks for no more" in again.stdout
    assert len(table(sweep)) == len(df) and _mtimes(sweep) == after
    assert len(json.loads((sweep / RECORD_FILE).read_text())["rounds"]) == 1


def test_cli__a_killed_refine_rerun_completes_its_round_once(coarse, tmp_path):
    sweep = _copy(coarse, tmp_path / "qs")
    new_j = _expected_new_j(sweep)
    killed = _refine(sweep, kill_at="refine_after_record")
    assert killed.returncode == 9, killed.stderr[-2000:]
    (rnd,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd["status"] == "started" and len(rnd["commands"]) == 1 and len(list(sweep.glob("*/cell.json"))) == 6

    killed = _refine(sweep, kill_at="refine_after_command")  # the round's cells ran; the record did not hear of it
    assert killed.returncode == 9, killed.stderr[-2000:]
    (rnd2,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd2["status"] == "started" and rnd2["commands"] == rnd["commands"]
    ran = _mtimes(sweep)
    assert len(ran) == 6 + 2 * len(new_j)

    proc = ok(_refine(sweep))
    assert "started but not finished" in proc.stdout
    assert "resume: " in proc.stdout + proc.stderr
    (rnd3,) = json.loads((sweep / RECORD_FILE).read_text())["rounds"]
    assert rnd3["status"] == "finished" and rnd3["commands"] == rnd["commands"]
    df = table(sweep)
    assert len(df) == 6 + 2 * len(new_j) and df["cell_key"].is_unique
    assert _mtimes(sweep) == ran  # each cell ran exactly once


def test_plan_round__a_trusted_dataset_is_not_refined():
    cells = pd.DataFrame({"alpha": [0.3] * 3, "dict_size": [16, 32, 64], "seed": [0] * 3})
    estimates = {"groups": [{"label": {}, "verdict": {"verdict": "TRUSTED"},
                             "estimates": [{"signal": "loss_basin", "value": 32.0}]}]}
    assert plan_round(estimates, cells) == []
    estimates["groups"][0]["verdict"]["verdict"] = "NOT TRUSTED"
    (plan,) = plan_round(estimates, cells)
    assert plan.added_dict_sizes == [23, 45]


def test_multirun__refine_rounds_refines_an_untrusted_sweep_by_itself(tmp_path):
    """hydra.callbacks.report.refine_rounds (the quickstart sets 2): the sweep's own end refines it."""
    sweep_dir = tmp_path / "auto"
    grid = [g for g in GRID if not g.startswith(("hydra.callbacks.report.refine_rounds", "dict_size"))]
    proc = ok(subprocess.run([sys.executable, "-m", "sae_sweep", "-m", *grid, "dict_size=16,32,64,128",
                              "hydra.callbacks.report.refine_rounds=1",
                              # seconds-long runs neither converge nor reproduce: the mechanism is under test here
                              "hydra.callbacks.report.min_converged_share=0", "hydra.callbacks.report.min_reproduced_share=0", "hydra.callbacks.report.min_reproduced_at_h=0",
                              f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=cli_env(), capture_output=True,
                             text=True, timeout=300))
    record = json.loads((sweep_dir / RECORD_FILE).read_text())
    assert [r["status"] for r in record["rounds"]] == ["finished"]  # one round, and its multiruns did not refine again
    assert all("hydra.callbacks.report.refine_rounds=0" in c for c in record["rounds"][0]["commands"])
    added = record["rounds"][0]["datasets"][0]["added_dict_sizes"]
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    assert set(added) <= set(runs["dict_size"]) and len(runs) == runs["cell_key"].nunique()
    assert "refining the grid" in proc.stderr + proc.stdout
    report = (sweep_dir / "report.md").read_text()
    assert "Cells added by refinement" in report and "python -m sae_sweep -m experiment=quickstart" in report


def test_plan_round__a_dataset_whose_alphas_were_extended_once_is_not_extended_again():
    cells = pd.DataFrame({"alpha": [0.1, 0.3, 1.0] * 3, "dict_size": [16] * 3 + [32] * 3 + [64] * 3, "seed": [0] * 9})
    estimates = {"groups": [{"label": {}, "alpha_selection": {"used": [0.1, 0.3, 1.0], "best": 0.1},
                             "estimates": [{"signal": "loss_basin", "value": 32.0}]}]}
    assert plan_round(estimates, cells)[0].added_alphas == [0.0333]
    (plan,) = plan_round(estimates, cells, extended={"all"})
    assert plan.added_alphas == [] and plan.added_dict_sizes == [23, 45]
