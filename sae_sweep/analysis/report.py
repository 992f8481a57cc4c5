"""Turn a finished sweep dir into estimates of h, figures and report.md.

``analyze(sweep_dir)`` reads the cells back from disk (sweep_data.py), runs the three estimators
(estimate.py) on every dataset of the sweep (a sweep over ``data.h`` has one per h), draws the
figures (plots.py) and writes, into the sweep dir:

    report.md                         estimates table, figures, definitions, commands
    estimates.json                    the same estimates, machine-readable
    analysis/<dataset>/*.png          the figures
    analysis/<dataset>/recovery.csv   per true feature: frequency and best cosine, per run
    analysis/<dataset>/<signal>.csv   the evidence behind each estimate (alive counts, basin, agreement)
    analysis/<dataset>/agreement_alpha=<a>.csv   dictionary-vs-dictionary MMCS (seed mean)
    analysis/<dataset>/sensitivity.csv  each estimate with its main threshold varied (SENSITIVITY_GRID)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sae_sweep.analysis import estimate as est
from sae_sweep.analysis import plots
from sae_sweep.analysis import verdict as vd
from sae_sweep.analysis.refinement import refined_cells
from sae_sweep.analysis.settings import AnalysisSettings
from sae_sweep.analysis.sweep_data import (
    group_slug,
    has_weights,
    load_cells,
    read_dictionary,
    read_latents,
    recovery_table,
    split_groups,
    true_h,
    with_alive,
)
from sae_sweep.record import ESTIMATES_FILE, MULTIRUN_FILE, REFINEMENT_FILE, REPORT_FILE


@dataclass
class GroupReport:
    label: dict[str, Any]
    true_h: int | None
    n_cells: int
    estimates: list[est.Estimate]
    figures: dict[str, Path] = field(default_factory=dict)
    recovery: pd.DataFrame | None = None  # est.recovery_by_frequency, when the ground truth is known
    warnings: list[str] = field(default_factory=list)
    sensitivity: pd.DataFrame | None = None  # each signal's estimate with its main threshold varied
    selection: vd.AlphaSelection | None = None  # the working alphas and why the others were excluded
    verdict: vd.Verdict | None = None
    refined: pd.DataFrame | None = None  # cells added by refinement (sae_sweep.refine): alpha, dict_size, round

    def consensus(self) -> float | None:
        """Median of the estimates that gave a value."""
        values = [e.value for e in self.estimates if e.value is not None]
        return float(np.median(values)) if values else None


Dictionaries = dict[str, tuple[np.ndarray, np.ndarray]]  # run dir -> (unit atoms (J, N), frequency (J,))


def load_dictionaries(cells: pd.DataFrame) -> Dictionaries:
    """The saved atoms and firing frequencies of every cell that has them, read once."""
    return {d: (read_dictionary(d), read_latents(d)["frequency"]) for d in cells["run_dir"] if has_weights(d)}


def agreement_matrices(cells: pd.DataFrame, dictionaries: Dictionaries) -> dict[tuple[float, int], pd.DataFrame]:
    """A[J, J'] per (alpha, seed) from the saved dictionaries and latent frequencies."""
    out = {}
    cells = cells[cells["run_dir"].isin(dictionaries)]
    for (alpha, seed), g in cells.groupby(["alpha", "seed"]):
        by_size = {int(r.dict_size): dictionaries[r.run_dir] for r in g.itertuples()}
        if len(by_size) >= 2:
            out[(float(alpha), int(seed))] = est.agreement_matrix(by_size)
    return out


@dataclass
class Matches:
    """Per cell with weights (run dir): ``best``, one array per other seed at the same (alpha, J), each of
    its alive atoms' best cosine with that seed's alive atoms; ``twins``, the pairs (i, j, cosine) of its
    own alive atoms whose cosine reaches ``floor``. Computed once; any ``reproduce_cos >= floor`` reads it."""

    best: dict[str, list[np.ndarray]]
    twins: dict[str, np.ndarray]
    floor: float


def match_cosines(cells: pd.DataFrame, dictionaries: Dictionaries, min_frequency: float,
                  twin_floor: float = 0.8) -> Matches:
    """The cosines every ``reproduce_cos`` from ``twin_floor`` up reads (:class:`Matches`)."""
    alive = {d: atoms[freq > min_frequency] for d, (atoms, freq) in dictionaries.items()}
    best: dict[str, list[np.ndarray]] = {}
    twins: dict[str, np.ndarray] = {}
    for _, g in cells[cells["run_dir"].isin(alive)].groupby(["alpha", "dict_size"]):
        for run_dir, seed in zip(g["run_dir"], g["seed"], strict=True):
            best[run_dir] = [est.best_match_cos(alive[run_dir], alive[d])
                             for d, s in zip(g["run_dir"], g["seed"], strict=True) if s != seed]
            twins[run_dir] = est.twin_pairs(alive[run_dir], twin_floor)
    return Matches(best, twins, twin_floor)


def with_reproduced(cells: pd.DataFrame, matches: Matches, min_cos: float) -> pd.DataFrame:
    """``reproduced``: how many of a cell's alive atoms another seed's dictionary at the same (alpha, J) has
    (an alive atom within ``min_cos``), averaged over the other seeds, so the count does not grow with the
    number of seeds; ``distinct``: the same with twins (atoms of the cell within ``min_cos`` of each other,
    transitively) counted once. NaN for a cell without saved weights or without another seed to compare with.
    """
    if min_cos < matches.floor:
        raise ValueError(f"reproduce_cos {min_cos} is below the twin cosines computed (from {matches.floor})")
    out = cells.copy()
    reproduced, distinct = [], []
    for d in out["run_dir"]:
        if not matches.best.get(d):
            reproduced.append(np.nan)
            distinct.append(np.nan)
            continue
        pairs = matches.twins[d]
        labels = est.twin_groups(len(matches.best[d][0]), pairs[pairs[:, 2] >= min_cos, :2].astype(int))
        reproduced.append(float(np.mean([(b >= min_cos).sum() for b in matches.best[d]])))
        distinct.append(float(np.mean([est.distinct_reproduced(labels, b, min_cos) for b in matches.best[d]])))
    out["reproduced"], out["distinct"] = reproduced, distinct
    return out


# Each signal's main threshold (its AnalysisSettings field), varied around its default for the report's
# sensitivity table.
SENSITIVITY_GRID = {"reproduce_cos": ("dead_latents", (0.8, 0.85, 0.9, 0.95)),
                    "basin_tolerance": ("loss_basin", (0.01, 0.015, 0.02, 0.03, 0.04)),
                    "min_agreement": ("dictionary_agreement", (0.8, 0.85, 0.9, 0.95))}


def sensitivity(cells: pd.DataFrame, matches: Matches, matrices: dict[tuple[float, int], pd.DataFrame],
                settings: AnalysisSettings) -> pd.DataFrame:
    """Each signal's estimate with its main threshold varied over SENSITIVITY_GRID (and the setting in use).

    Rows: signal, parameter, value, estimate, default (whether ``value`` is the setting of this report).
    """
    def run(parameter: str, value: float) -> float | None:
        if parameter == "reproduce_cos":
            return est.estimate_dead_latents(with_reproduced(cells, matches, value), min_dead_share=settings.min_dead_share,
                                             min_reproduced_share=settings.min_reproduced_share,
                                             min_gain=settings.distinct_gain).value
        if parameter == "basin_tolerance":
            return est.estimate_loss_basin(cells, tolerance=value).value
        return (est.estimate_agreement(matrices, min_agreement=value, plateau=settings.agreement_plateau).value
                if matrices else None)

    rows = []
    for parameter, (signal, grid) in SENSITIVITY_GRID.items():
        current = getattr(settings, parameter)
        for value in sorted({*grid, current}):
            rows.append({"signal": signal, "parameter": parameter, "value": value,
                         "estimate": run(parameter, value), "default": value == current})
    return pd.DataFrame(rows)


def signals(cells: pd.DataFrame, matrices: dict[tuple[float, int], pd.DataFrame],
            settings: AnalysisSettings) -> list[est.Estimate]:
    """The three estimates of h over ``cells`` (pooled over their alphas), in the report's order."""
    return [
        est.estimate_dead_latents(cells, min_dead_share=settings.min_dead_share,
                                  min_reproduced_share=settings.min_reproduced_share, min_gain=settings.distinct_gain),
        est.estimate_loss_basin(cells, tolerance=settings.basin_tolerance),
        est.estimate_agreement(matrices, min_agreement=settings.min_agreement, plateau=settings.agreement_plateau),
    ]


def analyze_group(label: dict[str, Any], cells: pd.DataFrame, out_dir: Path,
                  settings: AnalysisSettings) -> GroupReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = with_alive(cells, settings.min_frequency)
    if "l1_sum" not in cells.columns or cells["l1_sum"].isna().any():
        cells["l1_sum"] = cells["l1"] * cells["dict_size"]
    h = true_h(cells)
    dictionaries = load_dictionaries(cells)
    twin_floor = min(settings.reproduce_cos, *SENSITIVITY_GRID["reproduce_cos"][1])
    matches = match_cosines(cells, dictionaries, settings.min_frequency, twin_floor)
    all_cells = with_reproduced(cells, matches, settings.reproduce_cos)
    selection = vd.select_alphas(all_cells, min_converged_share=settings.min_converged_share,
                                 min_reproduced_share=settings.min_reproduced_share,
                                 alpha_share_margin=settings.alpha_share_margin)
    selection.evidence.to_csv(out_dir / "alphas.csv", index=False)
    # Every signal pools the working alphas only; with none, they run on all (the verdict says why not to trust them).
    cells = all_cells[all_cells["alpha"].isin(selection.used)] if selection.used else all_cells
    matrices = agreement_matrices(cells, dictionaries)
    estimates = signals(cells, matrices, settings)
    dead, basin, agree = estimates
    # The excluded alpha next below the working ones, read on its own: the verdict asks whether it counts more.
    edge = vd.alpha_below(selection, all_cells)
    below_values = None
    if edge is not None:
        below = all_cells[np.isclose(all_cells["alpha"].to_numpy(dtype=float), edge["alpha"])]
        below_values = {e.signal: e.value for e in signals(below, agreement_matrices(below, dictionaries), settings)}
    trust = vd.verdict(all_cells, selection, {e.signal: e.value for e in estimates},
                       min_converged_share=settings.min_converged_share,
                       min_reproduced_at_h=settings.min_reproduced_at_h, max_spread=settings.max_spread,
                       min_converged_below=settings.min_converged_below, below_values=below_values)
    robustness = sensitivity(cells, matches, matrices, settings)
    robustness.to_csv(out_dir / "sensitivity.csv", index=False)
    for e in estimates:  # the evidence behind each estimate, as a table beside the figures
        if e.evidence is not None and not e.evidence.empty:
            e.evidence.to_csv(out_dir / f"{e.signal}.csv", index=False)
    figures: dict[str, Path] = {}
    title_tail = f" ({group_slug(label)})" if label else ""
    if "mmcs" in cells.columns and cells["mmcs"].notna().any():
        figures["mmcs_heatmap"] = out_dir / "mmcs_heatmap.png"
        plots.mmcs_heatmap(cells, figures["mmcs_heatmap"], true_h=h,
                           title=f"MMCS with the true features over (α, J){title_tail}")
    figures["alive_vs_dict_size"] = out_dir / "alive_vs_dict_size.png"
    plots.alive_vs_dict_size(cells, figures["alive_vs_dict_size"], estimate=dead.value, interval=dead.interval,
                             true_h=h, title=f"Dead-latent signal: alive latents vs J{title_tail}")
    basin_cells = basin.evidence if basin.evidence is not None else cells
    figures["losses_vs_alpha"] = out_dir / "losses_vs_alpha.png"
    plots.losses_vs_alpha(basin_cells, figures["losses_vs_alpha"], estimate=basin.value, true_h=h)
    if matrices:
        mean = est.mean_matrices(matrices)
        for alpha, m in mean.items():
            m.to_csv(out_dir / f"agreement_alpha={alpha:g}.csv")
        figures["agreement"] = out_dir / "agreement.png"
        plots.agreement_matrices(mean, figures["agreement"], estimate=agree.value, true_h=h,
                                 title=f"Dictionary agreement: weighted MMCS between sizes{title_tail}")
    recovery = recovery_table(cells)
    by_frequency = None
    if not recovery.empty:
        recovery.to_csv(out_dir / "recovery.csv", index=False)
        by_frequency = est.recovery_by_frequency(recovery)
        figures["recovery_vs_frequency"] = out_dir / "recovery_vs_frequency.png"
        plots.recovery_vs_frequency(recovery, figures["recovery_vs_frequency"])
    warnings = []
    if "l1_norm" in cells.columns and (cells["l1_norm"] == "latents").any():
        warnings.append("these runs divide the L1 term by J (sae.l1_norm=latents), so one alpha is a weaker "
                        "penalty at larger J; the dead-latent and loss-basin estimates compare J at unequal "
                        "penalties. Sweep with sae.l1_norm=inputs for estimation.")
    return GroupReport(label, h, len(all_cells), estimates, figures, by_frequency, warnings, robustness, selection, trust)


def analyze(sweep_dir: Path, settings: AnalysisSettings | None = None,
            cells: pd.DataFrame | None = None) -> list[GroupReport]:
    """Estimates, figures, report.md and estimates.json for a finished sweep dir (``cells``: already loaded)."""
    sweep_dir = Path(sweep_dir)
    settings = settings or AnalysisSettings()
    cells = load_cells(sweep_dir) if cells is None else cells
    if cells.empty:
        raise ValueError(f"{sweep_dir} holds no completed runs to analyse")
    reports = [analyze_group(label, g, sweep_dir / "analysis" / group_slug(label), settings)
               for label, g in split_groups(cells)]
    try:
        refined = refined_cells(sweep_dir)
    except ValueError:  # an unreadable refinement.json: the report goes on without it
        refined = None
    for r in reports:
        if refined is not None and not refined.empty:
            r.refined = refined[refined["dataset"] == group_slug(r.label)].reset_index(drop=True)
    write_estimates(sweep_dir, reports, settings)
    write_report(sweep_dir, reports, settings)
    return reports


# --- output --------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.3g}"


def _interval(e: est.Estimate) -> str:
    return f"[{_fmt(e.interval[0])}, {_fmt(e.interval[1])}]" if e.interval else "-"


def write_estimates(sweep_dir: Path, reports: list[GroupReport], settings: AnalysisSettings) -> None:
    blob = {"settings": asdict(settings), "groups": [
        {"label": r.label, "true_h": r.true_h, "cells": r.n_cells, "consensus": r.consensus(),
         "verdict": r.verdict.as_dict() if r.verdict is not None else None,
         "alpha_selection": r.selection.as_dict() if r.selection is not None else None,
         "refined_cells": r.refined.to_dict("records") if r.refined is not None else [],
         "estimates": [e.as_dict() for e in r.estimates], "warnings": r.warnings,
         "recovery_by_frequency": r.recovery.to_dict("records") if r.recovery is not None else None,
         "sensitivity": r.sensitivity.to_dict("records") if r.sensitivity is not None else None,
         "figures": {k: str(p.relative_to(sweep_dir)) for k, p in r.figures.items()}} for r in reports]}
    (sweep_dir / ESTIMATES_FILE).write_text(json.dumps(blob, indent=2, default=str))


def verdict_lines(reports: list[GroupReport]) -> list[str]:
    """One line per dataset: its verdict, and for NOT TRUSTED why and what to do."""
    return [f"{group_slug(r.label)}: {r.verdict.line()}" for r in reports if r.verdict is not None]


def estimates_table(reports: list[GroupReport]) -> str:
    """The verdicts, then a plain-text table of every group's estimates next to the true h (printed after a sweep)."""
    lines = [*verdict_lines(reports)]
    for r in reports:
        if r.selection is not None:
            used = ", ".join(f"{a:g}" for a in r.selection.used) or "none"
            lines.append(f"{group_slug(r.label)}: working alphas {used}"
                         + "".join(f"; alpha {a:g} excluded ({why})" for a, why in r.selection.excluded.items()))
    lines.append(f"{'dataset':<18} {'signal':<22} {'estimate h':>10} {'90% interval':>16} {'true h':>7}")
    for r in reports:
        name = group_slug(r.label)
        for e in [*r.estimates, None]:
            signal, value, interval = ("consensus (median)", r.consensus(), "-") if e is None else (
                e.signal, e.value, _interval(e))
            lines.append(f"{name:<18} {signal:<22} {_fmt(value):>10} {interval:>16} {_fmt(r.true_h):>7}")
    return "\n".join(lines)


def write_report(sweep_dir: Path, reports: list[GroupReport], settings: AnalysisSettings) -> None:
    md = [f"# Feature-count report: `{sweep_dir.name}`", ""]
    md += [f"**{line}**" for line in verdict_lines(reports)] + [""]
    command = _sweep_command(sweep_dir)
    if command:
        md += ["Sweep:", "", "```bash", command, "```", ""]
    md += ["Re-create this report (any thresholds can be changed; `--help` lists them):", "", "```bash",
           f"python -m sae_sweep.analyze {sweep_dir}", "```", "",
           "## Estimates of h", "",
           "| dataset | signal | estimate ĥ | 90% interval (bootstrap over seeds) | per seed | true h | note |",
           "|---|---|---|---|---|---|---|"]
    for r in reports:
        for e in r.estimates:
            per_seed = ", ".join(f"{s}: {_fmt(v)}" for s, v in e.per_seed.items()) or "-"
            md.append(f"| {group_slug(r.label)} | {e.signal} | {_fmt(e.value)} | {_interval(e)} | {per_seed} | "
                      f"{_fmt(r.true_h)} | {e.note} |")
        md.append(f"| {group_slug(r.label)} | **consensus** (median) | **{_fmt(r.consensus())}** | | | "
                  f"{_fmt(r.true_h)} | |")
    md += ["", "Thresholds: " + ", ".join(f"`{k}={v}`" for k, v in asdict(settings).items()) + ".", "",
           "Definitions (see `sae_sweep/analysis/estimate.py`): **dead_latents**: a latent is alive when it fires and "
           "(with two or more seeds) another seed's dictionary at the same (alpha, J) has an alive atom within the "
           "reproduce cosine (a mean over the other seeds), and twins (atoms of one dictionary within that cosine of each "
           "other) count once; per alpha, ĥ is that count at the largest J reached while each added latent still adds at "
           "least the distinct gain of them; the most over alphas (one seed: a hinge in log-log coordinates through the "
           "firing-only count, an upper bound; median over alphas). "
           "**loss_basin**: a cell is in the basin when its total loss is within the tolerance of the best "
           "dictionary size at that alpha; per alpha, ĥ is the smallest J in the basin; median over alphas. "
           "**dictionary_agreement**: frequency-weighted MMCS of dictionary J's atoms against each larger "
           "dictionary at the same alpha; ĥ is the smallest J whose worst agreement is within the agreement plateau of the "
           "highest. Every signal pools only the working alphas. No estimator uses the "
           "ground truth; the MMCS heatmap and the recovery plot do.", ""]
    md += ["**Verdict**: TRUSTED needs, with no ground truth: a working alpha and two or more seeds; at least "
           f"{settings.min_converged_share:.0%} of the working alphas' runs converged; two or more signals within "
           f"{settings.max_spread:.0%} of their median; that median inside the J grid; and at J near it a reproduced share "
           f"of at least {settings.min_reproduced_at_h:.0%}; the excluded alpha next below the working ones, if any, "
           f"with at least {settings.min_converged_below:.0%} of its runs converged "
           "(`sae_sweep/analysis/verdict.py`). Working alphas: converged, "
           "reproducible across seeds, and within the margin of the most reproducible alpha; every signal pools only them.",
           ""]
    for r in reports:
        md += [f"## Dataset `{group_slug(r.label)}` ({r.n_cells} completed runs, true h = {_fmt(r.true_h)})", ""]
        if r.verdict is not None:
            md += [f"Verdict: **{r.verdict.label}**", ""] + [f"- {why}" for why in r.verdict.reasons]
            dissent = (r.verdict.checks.get("dissent") or {}) if r.verdict.trusted else {}
            md += [f"- dissent: {k} {v:.0f}, more than {settings.max_spread:.0%} from the consensus "
                   f"{r.verdict.checks['consensus']:.0f} (outvoted by the signals that agree)" for k, v in dissent.items()]
            md += [""] if r.verdict.reasons or dissent else []
        md += [f"**Warning**: {w}" for w in r.warnings] + ([""] if r.warnings else [])
        if r.selection is not None and not r.selection.evidence.empty:
            md += ["Alphas (the signals pool the used ones):", "",
                   "| alpha | runs | converged | best reproduced share (J) | FVU at largest J | used | reason |",
                   "|---|---|---|---|---|---|---|"]
            for x in r.selection.evidence.itertuples():
                conv = f"{x.converged_share:.0%}" if math.isfinite(x.converged_share) else "-"
                rep = (f"{x.best_reproduced_share:.0%} ({x.best_reproduced_j:.0f})"
                       if math.isfinite(x.best_reproduced_share) else "-")
                fvu = f"{x.fvu_at_largest_j:.3f}" if math.isfinite(getattr(x, "fvu_at_largest_j", math.nan)) else "-"
                md.append(f"| {x.alpha:g} | {x.runs} | {conv} | {rep} | {fvu} | {'yes' if x.used else 'no'} | {x.reason} |")
            md.append("")
        if r.refined is not None and not r.refined.empty:
            added = ", ".join(f"(alpha {x.alpha:g}, J {x.dict_size}, round {x.round})" for x in r.refined.itertuples())
            md += [f"Cells added by refinement (`python -m sae_sweep.refine`): {added}.", ""]
        if r.sensitivity is not None and not r.sensitivity.empty:
            md += ["Sensitivity: each estimate with its main threshold varied (bold: this report's setting). An "
                   "estimate that moves with the threshold is weaker evidence than one that does not.", "",
                   "| signal | threshold | value → ĥ |", "|---|---|---|"]
            for (signal, parameter), g in r.sensitivity.groupby(["signal", "parameter"], sort=False):
                entries = [f"**{x.value:g} → {_fmt(x.estimate)}**" if x.default else f"{x.value:g} → {_fmt(x.estimate)}"
                           for x in g.itertuples()]
                md.append(f"| {signal} | `{parameter}` | {' · '.join(entries)} |")
            md.append("")
        if r.recovery is not None and not r.recovery.empty:
            md += ["Recovery against feature frequency (ground truth): mean best cosine of the more frequent and "
                   "the rarer half of the true features, share of each recovered at cos > 0.9, and the rank "
                   "correlation between frequency and best cosine. Positive correlation at J below h: small "
                   "dictionaries learn the frequent features first.", "",
                   "| J | frequent half cos | rare half cos | frequent recovered | rare recovered | Spearman |",
                   "|---|---|---|---|---|---|"]
            md += [f"| {int(x.dict_size)} | {x.frequent_half_cos:.3f} | {x.rare_half_cos:.3f} | "
                   f"{x.frequent_half_recovered:.0%} | {x.rare_half_recovered:.0%} | {x.spearman_frequency_cos:.2f} |"
                   for x in r.recovery.itertuples()]
            md.append("")
        for key, path in r.figures.items():
            md += [f"### {key.replace('_', ' ')}", "", f"![{key}]({path.relative_to(sweep_dir)})", ""]
    (sweep_dir / REPORT_FILE).write_text("\n".join(md))


def _sweep_command(sweep_dir: Path) -> str | None:
    """The sweep's original command: from refinement.json when refined (every multirun rewrites multirun.yaml)."""
    try:
        record = json.loads((sweep_dir / REFINEMENT_FILE).read_text())
        task = record.get("task_overrides") if isinstance(record, dict) else None
    except (OSError, ValueError):
        task = None
    if task is None:
        path = sweep_dir / MULTIRUN_FILE
        if not path.exists():
            return None
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        task = OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []
    return "python -m sae_sweep -m " + " ".join(str(t) for t in task)
