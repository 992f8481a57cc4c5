"""Refinement of a grid around its estimates: the proposal rule on planted inputs, and the record and its
resume with a stand-in launcher.
"""

from __future__ import annotations

import json
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
from sae_sweep.record import REFINEMENT_FILE as RECORD_FILE
from sae_sweep.refine import main
from sae_sweep.sweep.refine import analysis_overrides, dataset_overrides, refine, round_commands


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


def test_plan_round__a_trusted_dataset_is_not_refined():
    cells = pd.DataFrame({"alpha": [0.3] * 3, "dict_size": [16, 32, 64], "seed": [0] * 3})
    estimates = {"groups": [{"label": {}, "verdict": {"verdict": "TRUSTED"},
                             "estimates": [{"signal": "loss_basin", "value": 32.0}]}]}
    assert plan_round(estimates, cells) == []
    estimates["groups"][0]["verdict"]["verdict"] = "NOT TRUSTED"
    (plan,) = plan_round(estimates, cells)
    assert plan.added_dict_sizes == [23, 45]


def test_plan_round__a_dataset_whose_alphas_were_extended_once_is_not_extended_again():
    cells = pd.DataFrame({"alpha": [0.1, 0.3, 1.0] * 3, "dict_size": [16] * 3 + [32] * 3 + [64] * 3, "seed": [0] * 9})
    estimates = {"groups": [{"label": {}, "alpha_selection": {"used": [0.1, 0.3, 1.0], "best": 0.1},
                             "estimates": [{"signal": "loss_basin", "value": 32.0}]}]}
    assert plan_round(estimates, cells)[0].added_alphas == [0.0333]
    (plan,) = plan_round(estimates, cells, extended={"all"})
    assert plan.added_alphas == [] and plan.added_dict_sizes == [23, 45]
