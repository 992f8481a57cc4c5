"""The shared look of the report's figures (sae_sweep/analysis/plots.py): styles, log2 J axes, heatmap
cells, estimate bands and legends, and ``save`` (a bare Agg ``Figure`` to PNG, nothing left open).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

DPI = 120
TRUE_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.8}
ESTIMATE_STYLE = {"color": "black", "linestyle": "-", "linewidth": 1.8}
BAND_STYLE = {"color": "black", "alpha": 0.12, "linewidth": 0}
VALUE_LABELS = {
    "mmcs": "MMCS, true features → learned atoms",
    "mmcs_learned": "MMCS, learned atoms → true features",
    "recovered_90": "share of true features recovered (cos > 0.9)",
    "recovered_99": "share of true features recovered (cos > 0.99)",
    "fvu": "fraction of variance unexplained",
}
ALPHA_LABEL = "L1 coefficient α"
J_LABEL = "dictionary size J"




def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at :data:`DPI`, creating parent folders, so callers never pre-create dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")


def finish(fig: Figure, path: Path) -> Figure:
    """Save and hand back the figure: every public function ends here."""
    save(fig, path)
    return fig


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas; constrained layout keeps colour bars and legends clear."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def require(df: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Fail early with the missing column names, rather than with a KeyError deep inside matplotlib."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing columns {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{name} is empty: there is nothing to plot")


def colours(values: Sequence[float], cmap: str = "viridis") -> dict[float, tuple[float, ...]]:
    """One colour per value, spaced by log(value): sweep axes are geometric, so equal ratios look equal."""
    keys = sorted(set(values))
    if not keys:
        return {}
    logs = np.log([float(v) for v in keys]) if all(v > 0 for v in keys) else np.asarray(keys, dtype=float)
    lo, hi = float(np.min(logs)), float(np.max(logs))
    span = hi - lo
    # Stay inside [0.05, 0.85] of the map: its yellow end is unreadable on white.
    pos = [0.45 if span == 0 else 0.05 + 0.8 * (x - lo) / span for x in logs]
    return {k: colormaps[cmap](p) for k, p in zip(keys, pos, strict=True)}


def text_colour(rgba: Sequence[float]) -> str:
    """Black on light cells, white on dark ones, so every annotation stays legible."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def num(v: float) -> str:
    """A count as an integer once it is large (1152, not 1.15e+03), else three significant digits."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def j_label(j: float) -> str:
    return f"{int(j)}" if float(j).is_integer() else f"{j:g}"


def log2_axis(ax: Axes, which: str) -> None:
    """A base-2 log axis with plain integer tick labels (64, not 2^6)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=2, nonpositive="mask")
    axis.set_major_locator(LogLocator(base=2))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def j_ticks(ax: Axes, sizes: Iterable[float]) -> None:
    """Tick the x axis at the sweep's own dictionary sizes (576, 1152, ... need not be powers of two)."""
    ticks = sorted({float(j) for j in sizes})
    if 1 < len(ticks) <= 12:
        ax.set_xticks(ticks, [j_label(j) for j in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())


def mean_grid(cells: pd.DataFrame, value: str, rows: str, cols: str) -> pd.DataFrame:
    """Mean of ``value`` per (row, column) cell over seeds; missing cells become NaN, axes ascend."""
    grid = cells.groupby([rows, cols])[value].mean().unstack(cols)
    return grid.sort_index().sort_index(axis=1)


def draw_heatmap(ax: Axes, grid: pd.DataFrame, *, vmin: float | None, vmax: float | None,
                  origin: str, fontsize: float) -> AxesImage:
    """Draw ``grid`` as coloured cells annotated with 2-decimal values; NaN cells stay blank."""
    cmap = colormaps["viridis"].with_extremes(bad="white")
    data = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, origin=origin, aspect="auto",
                   interpolation="nearest")
    for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                    color=text_colour(im.cmap(im.norm(v))))
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    return im


def annotation_size(n_rows: int, n_cols: int, base: float = 9.0) -> float:
    """Shrink annotations on dense grids so 2-decimal numbers still fit their cells."""
    return max(5.0, min(base, base * 8 / max(n_rows, n_cols, 1)))


def mark_estimate_x(ax: Axes, estimate: float | None, interval: tuple[float, float] | None,
                     true_h: int | None) -> None:
    """Vertical lines for the estimate (solid, with its interval band) and the true h (dashed)."""
    if interval is not None:
        lo, hi = sorted(interval)
        ax.axvspan(lo, hi, **BAND_STYLE, label=f"interval [{lo:.3g}, {hi:.3g}]")
    if estimate is not None:
        ax.axvline(estimate, **ESTIMATE_STYLE, label=f"estimate ĥ = {num(estimate)}")
    if true_h is not None:
        ax.axvline(true_h, **TRUE_STYLE, label=f"true h = {true_h}")


def side_legend(ax: Axes, **kwargs: object) -> None:
    """Legend outside the axes on the right: line plots with many series would hide data otherwise."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, **kwargs)
