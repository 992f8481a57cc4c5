"""Report figures: each writes a readable PNG, labels its axes, and copes with gaps in the sweep."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from sae_sweep.analysis import plots

ALPHAS = (1e-3, 1e-2, 1e-1)
SIZES = (16, 32, 64, 128)
TRUE_H = 64


def make_cells(alphas=ALPHAS, sizes=SIZES, seeds=(0, 1), **overrides) -> pd.DataFrame:
    """One row per (alpha, dict_size, seed) with plausible metrics; ``overrides`` replace columns."""
    rows = []
    for a, j, s in itertools.product(alphas, sizes, seeds):
        alive = min(j, TRUE_H) * (1 - 0.1 * s)
        rows.append({
            "alpha": a, "dict_size": j, "seed": s,
            "mmcs": 1 - abs(math.log2(j / TRUE_H)) / 4 - 0.02 * s,
            "alive": alive,
            "mse": 1e-3 / math.sqrt(j) * (1 + 10 * a),
            "l1_sum": 5.0 / (1 + 10 * a),
            "loss": 1e-3 / math.sqrt(j) * (1 + 10 * a) + a * 5.0 / j,
            "in_basin": j in (32, 64) and a < 0.05,
        })
    df = pd.DataFrame(rows)
    for col, val in overrides.items():
        df[col] = val
    return df


def make_matrices(alphas=ALPHAS, sizes=SIZES) -> dict[float, pd.DataFrame]:
    """Square agreement matrices, deliberately unsorted, with NaN on the diagonal."""
    rng = np.random.default_rng(0)
    order = list(reversed(sizes))
    out = {}
    for a in alphas:
        m = pd.DataFrame(rng.uniform(0.3, 1.0, (len(order), len(order))), index=order, columns=order)
        for j in order:
            m.loc[j, j] = np.nan
        out[a] = m
    return out


def make_features(sizes=SIZES, h=TRUE_H) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    freq = 0.99 ** np.arange(h) * 0.5
    rows = [{"dict_size": j, "alpha": 0.01, "seed": 0, "frequency": f,
             "best_cos": float(np.clip((0.95 if i < j else 0.4) + rng.normal(0, 0.03), -1, 1))}
            for j in sizes for i, f in enumerate(freq)]
    return pd.DataFrame(rows)


def assert_png(path: Path) -> None:
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.02  # not a blank canvas


def data_axes(fig: Figure) -> list:
    """Axes that hold data (skip colour bars, whose label is set on the bar)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.axison]


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_mmcs_heatmap__writes_png_with_alpha_columns_and_size_rows(tmp_path):
    fig = plots.mmcs_heatmap(make_cells(), tmp_path / "sub" / "mmcs.png", true_h=TRUE_H)
    assert_png(tmp_path / "sub" / "mmcs.png")
    (ax,) = data_axes(fig)
    assert "α" in ax.get_xlabel() and ax.get_ylabel() == "dictionary size J"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.01", "0.1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["16", "32", "64 (h)", "128"]
    assert "true h = 64" in ax.get_legend().get_texts()[0].get_text()


def test_mmcs_heatmap__averages_seeds_and_leaves_nan_cells_blank(tmp_path):
    cells = pd.DataFrame({"alpha": [0.1, 0.1, 0.1, 1.0], "dict_size": [8, 8, 16, 16],
                          "mmcs": [0.2, 0.4, np.nan, 0.9]})  # (0.1, 16) NaN, (1.0, 8) missing
    fig = plots.mmcs_heatmap(cells, tmp_path / "m.png", true_h=12)
    (ax,) = data_axes(fig)
    assert sorted(texts(ax)) == ["0.30", "0.90"]
    assert any("between rows" in t.get_text() for t in ax.get_legend().get_texts())


def test_mmcs_heatmap__single_alpha_and_unbounded_value(tmp_path):
    cells = make_cells(alphas=(0.01,), mse=np.linspace(2.0, 5.0, 8))
    fig = plots.mmcs_heatmap(cells, tmp_path / "m.png", value="mse", title="MSE")
    assert_png(tmp_path / "m.png")
    (ax,) = data_axes(fig)
    assert ax.get_title() == "MSE" and len(texts(ax)) == len(SIZES)
    assert ax.images[0].norm.vmax > 1  # not clamped to the MMCS range


def test_mmcs_heatmap__missing_column_names_it(tmp_path):
    with pytest.raises(ValueError, match="mmcs"):
        plots.mmcs_heatmap(make_cells().drop(columns="mmcs"), tmp_path / "m.png")


def test_alive_vs_dict_size__log2_axes_error_bars_and_reference_lines(tmp_path):
    fig = plots.alive_vs_dict_size(make_cells(), tmp_path / "alive.png", estimate=60.0,
                                   interval=(48.0, 80.0), true_h=TRUE_H)
    assert_png(tmp_path / "alive.png")
    (ax,) = data_axes(fig)
    assert ax.get_xlabel().startswith("dictionary size J") and ax.get_ylabel().startswith("alive latents")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"α = 0.001", "all latents alive (alive = J)", "estimate ĥ = 60", "true h = 64"} <= set(labels)
    assert ax.containers  # min–max error bars over the two seeds


def test_alive_vs_dict_size__reproduced_counts_add_dashed_lines_and_a_share_panel(tmp_path):
    cells = make_cells()
    cells["reproduced"] = cells["alive"] * np.where(cells["dict_size"] == TRUE_H, 0.95, 0.6)
    cells.loc[0, "reproduced"] = np.nan  # a cell without a partner seed is left out, not drawn as 0
    fig = plots.alive_vs_dict_size(cells, tmp_path / "alive.png", estimate=64.0, true_h=TRUE_H)
    assert_png(tmp_path / "alive.png")
    counts, share = data_axes(fig)
    assert counts.get_ylabel().startswith("alive latents") and counts.get_yscale() == "log"
    assert "α = 0.001, reproduced" in [t.get_text() for t in counts.get_legend().get_texts()]
    assert any(line.get_linestyle() == "--" for line in counts.lines)
    assert share.get_xscale() == "log" and share.get_ylabel() == "reproduced latents / J"
    assert share.get_ylim() == (0, 1.05)
    assert [t.get_text() for t in share.get_xticklabels()] == [str(j) for j in SIZES]  # the sweep's own J
    assert {"estimate ĥ = 64", "true h = 64", "α = 0.1"} <= {t.get_text() for t in share.get_legend().get_texts()}
    peak = max((line for line in share.lines if len(line.get_xdata()) == len(SIZES)), key=lambda ln: max(ln.get_ydata()))
    assert peak.get_xdata()[int(np.argmax(peak.get_ydata()))] == TRUE_H  # the share's peak sits at h
    assert all(max(line.get_ydata()) <= 1.0 for line in share.lines if len(line.get_xdata()) > 1)


def test_alive_vs_dict_size__single_alpha_single_seed_with_nan(tmp_path):
    cells = make_cells(alphas=(0.1,), seeds=(0,))
    cells.loc[1, "alive"] = np.nan
    fig = plots.alive_vs_dict_size(cells, tmp_path / "alive.png")
    assert_png(tmp_path / "alive.png")
    (ax,) = data_axes(fig)
    assert len(ax.lines[0].get_xdata()) == len(SIZES) - 1


def test_losses_vs_alpha__three_log_panels_with_basin_legend(tmp_path):
    fig = plots.losses_vs_alpha(make_cells(), tmp_path / "losses.png", estimate=60.0, true_h=TRUE_H)
    assert_png(tmp_path / "losses.png")
    axes = data_axes(fig)
    assert len(axes) == 3
    assert [ax.get_ylabel() for ax in axes] == ["reconstruction MSE", "L1: Σ_j |c_j| per sample",
                                                "total loss (training objective)"]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in axes)
    assert all("α" in ax.get_xlabel() for ax in axes)
    assert [ax.get_legend() is not None for ax in axes] == [False, False, True]
    labels = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    assert "J = 64 (true h, ≈ ĥ)" in labels and "filled: in the loss basin" in labels
    widths = {ln.get_label(): ln.get_linewidth() for ln in axes[0].lines}
    assert widths["J = 64 (true h, ≈ ĥ)"] > widths["J = 16"]
    assert fig.get_suptitle().startswith("Loss stickiness")


def test_losses_vs_alpha__works_without_basin_or_seed_columns(tmp_path):
    cells = make_cells(alphas=(0.01,), seeds=(0,)).drop(columns=["in_basin", "seed"])
    plots.losses_vs_alpha(cells, tmp_path / "losses.png", title="one alpha")
    assert_png(tmp_path / "losses.png")


def test_agreement_matrices__sorted_annotated_panels_with_shared_colourbar(tmp_path):
    mats = make_matrices(alphas=(1e-3, 1e-2, 1e-1, 0.3, 1.0))  # 5 panels: wraps to a second row
    fig = plots.agreement_matrices(mats, tmp_path / "agree.png", estimate=70.0, true_h=TRUE_H)
    assert_png(tmp_path / "agree.png")
    axes = data_axes(fig)
    assert len(axes) == 5
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["16", "32", "64 (h)", "128"]
    assert axes[0].get_xlabel() == "compared with J (columns)"
    assert axes[0].get_ylabel() == "reference J (rows)"
    assert axes[0].get_title() == "α = 0.001" and "true h = 64" in fig.get_suptitle()
    assert len(texts(axes[0])) == 12  # 16 cells less the NaN diagonal
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "MMCS (row atoms → column dictionary)"
    assert len(axes[0].patches) == 1  # the row nearest the estimate is outlined


def test_agreement_matrices__empty_dict_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="matrices"):
        plots.agreement_matrices({}, tmp_path / "agree.png")


def test_recovery_vs_frequency__log_frequency_axis_and_threshold_line(tmp_path):
    fig = plots.recovery_vs_frequency(make_features(), tmp_path / "recovery.png")
    assert_png(tmp_path / "recovery.png")
    (ax,) = data_axes(fig)
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "true feature firing probability"
    assert ax.get_ylabel() == "best cosine with a learned atom"
    assert ax.get_ylim()[1] == pytest.approx(1.02)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "recovered (cos > 0.9)" in labels and "J = 16" in labels
    assert ax.get_title().startswith("Recovery vs feature frequency")
