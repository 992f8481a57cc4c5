"""Figures of a sweep report: one PNG per question the sweep answers.

Every public function takes plain DataFrames (one row per run, or per true feature), writes one PNG
and returns the :class:`~matplotlib.figure.Figure`, so a report can embed the file and a test can
read the axes back. Figures are built as bare ``Figure`` objects on the Agg canvas: no pyplot, so no
global state, no GUI backend and nothing left open between calls.

Conventions shared by the figures: α (the L1 coefficient) is swept on a log grid, so it is a log
axis (or, in heatmaps, a categorical axis of log-spaced values); dictionary sizes J are powers of two
in practice, so they sit on log2 axes. The true number of features is a dashed red line
("true h = …"), the estimate a solid black line ("estimate ĥ = …") with a shaded band for its
interval. Missing or NaN cells are blank in heatmaps and skipped in lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from sae_sweep.analysis import figure as fg
from sae_sweep.analysis.figure import (
    ALPHA_LABEL,
    ESTIMATE_STYLE,
    J_LABEL,
    TRUE_STYLE,
    VALUE_LABELS,
)

# --------------------------------------------------------------------------- 1. MMCS heatmap


def mmcs_heatmap(cells: pd.DataFrame, path: Path, *, value: str = "mmcs", title: str | None = None,
                 true_h: int | None = None) -> Figure:
    """Heatmap of ``value`` (mean over seeds) over the (α, J) grid, as in Sharkey et al. 2022.

    Why: the MMCS surface shows at a glance where in the grid the learned dictionary matches the
    true features; the row J = h should be where it peaks. Colour runs 0–1 when every value lies in
    [0, 1] (so figures from different sweeps compare), otherwise over the data's range.
    """
    fg.require(cells, ["alpha", "dict_size", value], "cells")
    grid = fg.mean_grid(cells, value, "dict_size", "alpha")  # (J, alpha)
    finite = grid.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    unit = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
    n_j, n_a = grid.shape
    fig = fg.new_figure(min(16.0, max(5.5, 0.85 * n_a + 3.0)), min(12.0, max(4.0, 0.5 * n_j + 2.2)))
    ax = fig.add_subplot()
    im = fg.draw_heatmap(ax, grid, vmin=0.0 if unit else None, vmax=1.0 if unit else None, origin="lower",
                       fontsize=fg.annotation_size(n_j, n_a))
    label = VALUE_LABELS.get(value, value)
    ax.set_xticklabels([f"{a:.3g}" for a in grid.columns], rotation=45 if n_a > 6 else 0,
                       ha="right" if n_a > 6 else "center")
    ylabels = [fg.j_label(j) for j in grid.index]
    suffix = ""
    if true_h is not None:
        suffix = _mark_true_row(ax, list(grid.index), n_a, true_h, ylabels)
    ax.set_yticklabels(ylabels)
    ax.set_xlabel(f"{ALPHA_LABEL} (log-spaced grid)")
    ax.set_ylabel(J_LABEL)
    fig.colorbar(im, ax=ax, label=f"{label} (mean over seeds)")
    ax.set_title(title or f"{label} over the (α, J) grid{suffix}")
    return fg.finish(fig, path)


def _mark_true_row(ax: Axes, sizes: list[float], n_cols: int, true_h: int, ylabels: list[str]) -> str:
    """Outline the row J = true_h, or draw a dashed line where it would sit; returns a title suffix."""
    logs = np.log2(np.asarray(sizes, dtype=float))
    if true_h in sizes:
        i = sizes.index(true_h)
        ylabels[i] = f"{ylabels[i]} (h)"
        ax.add_patch(Rectangle((-0.5, i - 0.5), n_cols, 1, fill=False, clip_on=False,
                               edgecolor=TRUE_STYLE["color"], linestyle="--", linewidth=2.0,
                               label=f"true h = {true_h} (row outlined)"))
    elif logs.min() <= math.log2(true_h) <= logs.max():
        pos = float(np.interp(math.log2(true_h), logs, np.arange(len(sizes))))
        ax.axhline(pos, **TRUE_STYLE, label=f"true h = {true_h} (between rows)")
    else:
        return f"  (true h = {true_h}, outside the J grid)"
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False, borderaxespad=0.2)
    return ""


# --------------------------------------------------------------------------- 2. alive latents


def _seed_stats(data: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean, min, max and count of ``value`` over seeds per (alpha, dict_size); NaN rows dropped."""
    data = data.dropna(subset=["alpha", "dict_size", value])
    return data.groupby(["alpha", "dict_size"])[value].agg(["mean", "min", "max", "count"]).reset_index()


def _alpha_lines(ax: Axes, stats: pd.DataFrame, colours: dict[float, tuple[float, ...]], *,
                 linestyle: str = "-", suffix: str = "") -> None:
    """One line per alpha through the seed means, with min-max bars when there are several seeds."""
    for alpha, g in stats.groupby("alpha"):
        g = g.sort_values("dict_size")
        kw = {"color": colours[alpha], "marker": "o", "markersize": 4, "linewidth": 1.5, "linestyle": linestyle,
              "label": f"α = {alpha:.3g}{suffix}"}
        if (g["count"] > 1).any():
            yerr = np.vstack([g["mean"] - g["min"], g["max"] - g["mean"]])
            ax.errorbar(g["dict_size"], g["mean"], yerr=yerr, capsize=2.5, **kw)
        else:
            ax.plot(g["dict_size"], g["mean"], **kw)


def alive_vs_dict_size(cells: pd.DataFrame, path: Path, *, estimate: float | None = None,
                       interval: tuple[float, float] | None = None, true_h: int | None = None,
                       title: str | None = None) -> Figure:
    """Alive latents against dictionary size, one line per α, with the diagonal alive = J.

    Why: while J < h every latent finds a feature and the line hugs the diagonal; past h the extra
    latents die, or (on toy data, docs/calibration.md) keep firing as weak seed-specific splits and blends. With a
    ``reproduced`` column (alive latents another seed's dictionary also has) a dashed line per α shows
    it, and a second panel its share of J, which peaks at h: that peak is the estimate ĥ.
    """
    fg.require(cells, ["alpha", "dict_size", "alive"], "cells")
    stats = _seed_stats(cells, "alive")
    reproduced = _seed_stats(cells, "reproduced") if "reproduced" in cells.columns else pd.DataFrame()
    colours = fg.colours(list(stats["alpha"]) + list(reproduced.get("alpha", [])), "plasma")
    fig = fg.new_figure(13.0 if len(reproduced) else 8.5, 5.5)
    ax = fig.add_subplot(1, 2 if len(reproduced) else 1, 1)
    _alpha_lines(ax, stats, colours)
    if len(reproduced):
        _alpha_lines(ax, reproduced, colours, linestyle="--", suffix=", reproduced")
    xs = [v for v in [*stats["dict_size"], estimate, true_h, *(interval or ())] if v is not None and v > 0]
    if xs:
        ax.plot([min(xs), max(xs)], [min(xs), max(xs)], color="grey", linestyle=":", linewidth=1.5,
                label="all latents alive (alive = J)")
    fg.mark_estimate_x(ax, estimate, interval, true_h)
    if true_h is not None:  # the plateau the lines should reach; same legend entry as the vertical line
        ax.axhline(true_h, **{**TRUE_STYLE, "linewidth": 1.0}, alpha=0.6)
    fg.log2_axis(ax, "x")
    fg.j_ticks(ax, stats["dict_size"])
    fg.log2_axis(ax, "y")
    ax.set_xlabel(f"{J_LABEL} (log2)")
    ax.set_ylabel("alive latents (log2)")
    ax.grid(True, which="major", alpha=0.3)
    seeds_note = " (mean over seeds, bars: min–max)" if (stats["count"] > 1).any() else ""
    ax.set_title(title or f"Alive latents vs dictionary size{seeds_note}")
    if len(reproduced):
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        share_ax = fig.add_subplot(1, 2, 2)
        share = reproduced.assign(**{c: reproduced[c] / reproduced["dict_size"] for c in ("mean", "min", "max")})
        _alpha_lines(share_ax, share, colours)
        fg.mark_estimate_x(share_ax, estimate, interval, true_h)
        fg.log2_axis(share_ax, "x")
        fg.j_ticks(share_ax, share["dict_size"])
        share_ax.set_ylim(0, 1.05)
        share_ax.set_xlabel(f"{J_LABEL} (log2)")
        share_ax.set_ylabel("reproduced latents / J")
        share_ax.grid(True, which="major", alpha=0.3)
        share_ax.set_title("Share of J alive and reproduced by another seed (peak: ĥ)")
        fg.side_legend(share_ax)
    else:
        fg.side_legend(ax)
    return fg.finish(fig, path)


# --------------------------------------------------------------------------- 3. loss stickiness


LOSS_PANELS = (
    ("mse", "reconstruction MSE", "Reconstruction"),
    ("l1_sum", "L1: Σ_j |c_j| per sample", "Sparsity"),
    ("loss", "total loss (training objective)", "Total loss"),
)


def losses_vs_alpha(cells: pd.DataFrame, path: Path, *, estimate: float | None = None,
                    true_h: int | None = None, title: str | None = None) -> Figure:
    """Reconstruction, L1 and total loss against α, one line per dictionary size, three panels.

    Why: around J = h the losses of neighbouring dictionary sizes stick together over a range of α
    (the loss basin); filled markers show the cells the analysis put in that basin. The estimate has
    no axis here (x is α), so it is named in the suptitle and the nearest J's legend entry.
    """
    fg.require(cells, ["alpha", "dict_size", *(c for c, _, _ in LOSS_PANELS)], "cells")
    agg: dict[str, str] = {c: "mean" for c, _, _ in LOSS_PANELS}
    has_basin = "in_basin" in cells.columns
    data = cells.copy()
    if has_basin:  # a cell is in the basin if any of its seeds is (normally all agree)
        data["in_basin"] = data["in_basin"].fillna(False).astype(bool)
        agg["in_basin"] = "max"
    means = data.groupby(["dict_size", "alpha"]).agg(agg).reset_index()
    sizes = sorted(means["dict_size"].unique())
    colours = fg.colours(sizes, "viridis")
    near = _nearest_log2(sizes, estimate)
    fig = fg.new_figure(16.0, 5.0)
    axes = fig.subplots(1, len(LOSS_PANELS))
    for ax, (col, ylabel, panel) in zip(axes, LOSS_PANELS, strict=True):
        for j in sizes:
            g = means[means["dict_size"] == j].sort_values("alpha")
            g = g[np.isfinite(g[col].to_numpy(dtype=float))]
            _loss_line(ax, g, col, colours[j], _size_label(j, true_h, near),
                       thick=true_h is not None and j == true_h, has_basin=has_basin)
        ax.set_xscale("log", nonpositive="mask")
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel(ALPHA_LABEL)
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(True, which="major", alpha=0.3)
    handles, _ = axes[-1].get_legend_handles_labels()
    if has_basin:
        handles += [Line2D([], [], color="grey", marker="o", linestyle="none",
                           label="filled: in the loss basin"),
                    Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="none",
                           label="hollow: outside the basin")]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    notes = [f"estimate ĥ = {fg.num(estimate)}" if estimate is not None else "",
             f"true h = {true_h}" if true_h is not None else ""]
    note = ", ".join(n for n in notes if n)
    default = "Loss stickiness: losses vs α per dictionary size"
    fig.suptitle((title or default) + (f"  ({note})" if note else ""))
    return fg.finish(fig, path)


def _nearest_log2(sizes: Sequence[float], estimate: float | None) -> float | None:
    """The dictionary size closest to ``estimate`` in ratio (log2) terms, or None without an estimate."""
    if estimate is None or estimate <= 0 or not sizes:
        return None
    return min(sizes, key=lambda j: abs(math.log2(j) - math.log2(estimate)))


def _size_label(j: float, true_h: int | None, near: float | None) -> str:
    tags = [t for t, on in (("true h", true_h is not None and j == true_h), ("≈ ĥ", j == near)) if on]
    return f"J = {fg.j_label(j)}" + (f" ({', '.join(tags)})" if tags else "")


def _loss_line(ax: Axes, g: pd.DataFrame, col: str, colour: tuple[float, ...], label: str, *, thick: bool,
               has_basin: bool) -> None:
    """One dictionary size's line, markers filled where the cell is in the loss basin."""
    width = 3.2 if thick else 1.4
    ax.plot(g["alpha"], g[col], color=colour, linewidth=width, label=label)
    inside = g["in_basin"].to_numpy(dtype=bool) if has_basin else np.ones(len(g), dtype=bool)
    ax.scatter(g["alpha"][inside], g[col][inside], color=colour, s=28, zorder=3)
    ax.scatter(g["alpha"][~inside], g[col][~inside], facecolors="white", edgecolors=[colour], s=28,
               linewidths=1.3, zorder=3)


# --------------------------------------------------------------------------- 4. agreement matrices


def agreement_matrices(matrices: dict[float, pd.DataFrame], path: Path, *, estimate: float | None = None,
                       true_h: int | None = None, title: str | None = None) -> Figure:
    """One MMCS matrix per α: how well each dictionary's atoms are found in a dictionary of another size.

    Why: dictionaries smaller than h are (nearly) contained in the larger ones, while those larger
    than h start to disagree with each other; the row where agreement breaks down brackets ĥ.
    The colour bar is fixed to 0–1 and shared so the panels compare directly.
    """
    if not matrices:
        raise ValueError("matrices is empty: pass at least one {alpha: DataFrame}")
    alphas = sorted(matrices)
    n_cols = min(4, len(alphas))
    n_rows = math.ceil(len(alphas) / n_cols)
    size = max(max(m.shape) for m in matrices.values())
    panel = min(6.0, max(3.4, 0.45 * size + 1.6))
    fig = fg.new_figure(panel * n_cols + 1.4, panel * 0.92 * n_rows + (1.0 if estimate is not None else 0.6))
    grid_axes = fig.subplots(n_rows, n_cols, squeeze=False)
    used = list(grid_axes.flat[: len(alphas)])
    for ax in grid_axes.flat[len(alphas):]:
        ax.set_axis_off()
    im = None
    for ax, alpha in zip(used, alphas, strict=True):
        m = matrices[alpha].sort_index().sort_index(axis=1)
        im = fg.draw_heatmap(ax, m, vmin=0.0, vmax=1.0, origin="upper",
                           fontsize=fg.annotation_size(*m.shape, base=8.0))
        ax.set_xticklabels([_tagged(j, true_h) for j in m.columns], rotation=45, ha="right")
        ax.set_yticklabels([_tagged(j, true_h) for j in m.index])
        ax.set_xlabel("compared with J (columns)")
        ax.set_ylabel("reference J (rows)")
        ax.set_title(f"α = {alpha:.3g}")
        row = _nearest_log2(list(m.index), estimate)
        if row is not None:
            i = list(m.index).index(row)
            ax.add_patch(Rectangle((-0.5, i - 0.5), m.shape[1], 1, fill=False,
                                   edgecolor=ESTIMATE_STYLE["color"],
                                   linewidth=2.2, clip_on=False))
    fig.colorbar(im, ax=used, label="MMCS (row atoms → column dictionary)", shrink=0.9)
    if estimate is not None:
        fig.legend(handles=[Patch(fill=False, edgecolor="black", linewidth=2.0,
                                  label=f"row nearest the estimate ĥ = {fg.num(estimate)}")],
                   loc="outside lower center", fontsize=8, frameon=False)
    h_note = f"  (true h = {true_h}, tick marked (h))" if true_h is not None else ""
    fig.suptitle((title or "Agreement between dictionaries of different sizes, per α") + h_note)
    return fg.finish(fig, path)


def _tagged(j: float, true_h: int | None) -> str:
    return fg.j_label(j) + (" (h)" if true_h is not None and j == true_h else "")


# --------------------------------------------------------------------------- 5. recovery vs frequency


def recovery_vs_frequency(features: pd.DataFrame, path: Path, *, title: str | None = None,
                          threshold: float = 0.9) -> Figure:
    """Each true feature's best cosine with a learned atom against its firing probability, per J.

    Why: if a dictionary smaller than h spends its atoms on the most frequent features first, the
    small-J curves rise only at the high-frequency end; this tests that before trusting ĥ.
    Rows of all α and seeds are pooled.
    """
    fg.require(features, ["dict_size", "frequency", "best_cos"], "features")
    data = features.dropna(subset=["dict_size", "frequency", "best_cos"])
    data = data[data["frequency"] > 0]
    sizes = sorted(data["dict_size"].unique())
    colours = fg.colours(sizes, "viridis")
    edges = _log_bins(data["frequency"].to_numpy(dtype=float), 8)
    fig = fg.new_figure(9.0, 5.5)
    ax = fig.add_subplot()
    for j in sizes:
        g = data[data["dict_size"] == j]
        ax.scatter(g["frequency"], g["best_cos"], color=colours[j], s=7, alpha=0.25, linewidths=0)
        centres, means = _binned_mean(g["frequency"].to_numpy(dtype=float),
                                      g["best_cos"].to_numpy(dtype=float), edges)
        ax.plot(centres, means, color=colours[j], marker="o", markersize=4, linewidth=1.8,
                label=f"J = {fg.j_label(j)}")
    ax.axhline(threshold, color="black", linestyle=":", linewidth=1.3,
               label=f"recovered (cos > {threshold:g})")
    ax.set_xscale("log")
    low = float(data["best_cos"].min()) if len(data) else 0.0
    ax.set_ylim(min(0.0, low - 0.02), 1.02)
    ax.set_xlabel("true feature firing probability")
    ax.set_ylabel("best cosine with a learned atom")
    ax.grid(True, which="major", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", marker="o", alpha=0.4, linestyle="none", markersize=4,
                       label="dots: single features"),
                Line2D([], [], color="grey", marker="o", linewidth=1.8, markersize=4,
                       label="lines: mean per frequency bin")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    default = "Recovery vs feature frequency: do small dictionaries learn frequent features first?"
    ax.set_title(title or default, fontsize=11)
    return fg.finish(fig, path)


def _log_bins(freq: np.ndarray, n_bins: int) -> np.ndarray:
    """``n_bins`` log-spaced bin edges spanning the frequencies (one bin if they are all equal)."""
    if freq.size == 0:
        return np.array([1e-12, 1.0])
    lo, hi = float(freq.min()), float(freq.max())
    if lo == hi:
        return np.array([lo / 1.01, hi * 1.01])
    return np.geomspace(lo, hi, n_bins + 1)


def _binned_mean(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of y per bin of x, at the bins' geometric centres; empty bins are left out."""
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    centres = np.sqrt(edges[:-1] * edges[1:])
    keep = [b for b in range(len(edges) - 1) if (idx == b).any()]
    return centres[keep], np.array([y[idx == b].mean() for b in keep])
