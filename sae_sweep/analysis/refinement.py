"""Which cells would resolve a NOT TRUSTED estimate, and which cells refinement added: pure functions.

The proposal rule (``propose_dict_sizes``, ``propose_alpha``, ``plan_round``) reads a dataset's
estimates and its grid; the record readers (``read_estimates``, ``read_record``, ``refined_cells``)
read ``estimates.json`` and ``refinement.json``. Running a round (commands, subprocesses, writing the
record) is ``sae_sweep/sweep/refine.py``; the report lists ``refined_cells``. Pandas and json only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sae_sweep.analysis.sweep_data import group_slug, split_groups
from sae_sweep.record import ESTIMATES_FILE
from sae_sweep.record import REFINEMENT_FILE as RECORD_FILE

ALPHA_DIGITS = 3
REFINED_COLUMNS = ["dataset", "alpha", "dict_size", "round"]


class RefineError(ValueError):
    """Bad input, named as ``<field> <value> <what is allowed>``."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        super().__init__(f"{name} {value} {allowed}")


# --- the proposal rule (pure) --------------------------------------------------------------------
def geometric_midpoint(a: int, b: int) -> int:
    return round(math.sqrt(a * b))


def propose_dict_sizes(grid: Sequence[int], values: Sequence[float | None]) -> list[int]:
    """New J for one dataset: the geometric midpoints around each estimate ``v`` on the J grid.

    ``v`` on a grid point G[k] adds the midpoints to both neighbours (where they exist); ``v`` strictly
    between G[k] and G[k+1] adds their midpoint; ``v`` outside the grid, or None, adds nothing. A
    midpoint that rounds onto a grid point is dropped.
    """
    g = sorted(set(int(j) for j in grid))
    new: set[int] = set()
    for v in values:
        if v is None or not math.isfinite(v):
            continue
        for k, j in enumerate(g):
            if math.isclose(v, j, rel_tol=1e-9):
                if k > 0:
                    new.add(geometric_midpoint(g[k - 1], j))
                if k + 1 < len(g):
                    new.add(geometric_midpoint(j, g[k + 1]))
                break
            if k + 1 < len(g) and j < v < g[k + 1]:
                new.add(geometric_midpoint(j, g[k + 1]))
                break
    return sorted(new - set(g))


def round_sig(x: float, digits: int = ALPHA_DIGITS) -> float:
    return float(f"{x:.{digits}g}")


def propose_alpha(alphas: Sequence[float], best: float | None) -> list[float]:
    """One alpha beyond the grid when ``best`` is its smallest or largest alpha, one geometric step out.

    The step is the ratio of the two alphas at that end; nothing with fewer than two alphas, without a
    best alpha, or when the new value rounds (3 significant digits) onto the grid.
    """
    a = sorted(set(float(x) for x in alphas))
    if best is None or len(a) < 2 or not math.isfinite(best):
        return []
    if math.isclose(best, a[0], rel_tol=1e-6) and a[0] > 0:
        new = round_sig(a[0] / (a[1] / a[0]))
    elif math.isclose(best, a[-1], rel_tol=1e-6) and a[-2] > 0:
        new = round_sig(a[-1] * (a[-1] / a[-2]))
    else:
        return []
    return [] if any(math.isclose(new, x, rel_tol=1e-6) for x in a) else [new]


@dataclass
class DatasetPlan:
    """What one round adds to one dataset (a group of the analysis, e.g. ``data.h=64``)."""

    dataset: str
    label: dict[str, Any]
    grid_dict_sizes: list[int]
    grid_alphas: list[float]
    seeds: list[int]
    estimates: dict[str, float | None]
    best_alpha: float | None
    added_dict_sizes: list[int] = field(default_factory=list)
    added_alphas: list[float] = field(default_factory=list)
    used_alphas: list[float] = field(default_factory=list)  # the analysis's working alphas (empty: all)

    @property
    def new_j_alphas(self) -> list[float]:
        """The alphas new J run at: the working alphas (out-of-band ones would not be pooled anyway)."""
        return self.used_alphas or self.grid_alphas

    @property
    def empty(self) -> bool:
        return not self.added_dict_sizes and not self.added_alphas

    def cells(self) -> list[tuple[float, int]]:
        """(alpha, J) of every cell this plan adds, each once (seeds not counted)."""
        out = [(a, j) for j in self.added_dict_sizes for a in self.new_j_alphas]
        out += [(a, j) for a in self.added_alphas for j in sorted({*self.grid_dict_sizes, *self.added_dict_sizes})]
        return out


def _plain(v: Any) -> Any:
    """A table value (numpy scalar) as a JSON-able Python value."""
    return v.item() if hasattr(v, "item") else v


def plan_round(estimates: dict[str, Any], cells: pd.DataFrame, extended: set[str] = frozenset()) -> list[DatasetPlan]:
    """One plan per dataset found both in ``estimates.json`` and among the completed ``cells``, except
    datasets whose verdict is already TRUSTED. Datasets in ``extended`` had their alpha grid extended in an
    earlier round and get no second extension (the most reproducible alpha can move from one edge to the
    other as cells are added: extending after it would sweep alphas without end)."""
    by_slug = {group_slug(g.get("label") or {}): g for g in estimates.get("groups", [])}
    plans = []
    for label, group in split_groups(cells):
        slug = group_slug(label)
        if slug not in by_slug:
            continue
        est = by_slug[slug]
        if (est.get("verdict") or {}).get("verdict") == "TRUSTED":
            continue  # already resolved: nothing to refine
        values = {str(e.get("signal")): e.get("value") for e in est.get("estimates", [])}
        best = (est.get("alpha_selection") or {}).get("best")
        used = sorted(float(a) for a in (est.get("alpha_selection") or {}).get("used") or [])
        grid_j = sorted(int(j) for j in group["dict_size"].unique())
        grid_a = sorted(float(a) for a in group["alpha"].unique())
        plan = DatasetPlan(
            dataset=slug, label={k: _plain(v) for k, v in label.items()}, grid_dict_sizes=grid_j,
            grid_alphas=grid_a, seeds=sorted(int(s) for s in group["seed"].unique()),
            estimates={k: (None if v is None else float(v)) for k, v in values.items()},
            best_alpha=None if best is None else float(best),
            added_dict_sizes=propose_dict_sizes(grid_j, list(values.values())),
            added_alphas=[] if slug in extended else propose_alpha(grid_a, None if best is None else float(best)),
            used_alphas=[a for a in used if any(math.isclose(a, g, rel_tol=1e-6) for g in grid_a)])
        plans.append(plan)
    return plans


# --- the records ---------------------------------------------------------------------------------
def _read_list_record(path: Path, name: str, key: str, writer: str) -> dict[str, Any]:
    """A JSON object holding a ``key`` list, or RefineError naming the file."""
    try:
        blob = json.loads(path.read_text())
    except ValueError as exc:
        raise RefineError(name, path, f"must be JSON ({exc})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get(key), list):
        raise RefineError(name, path, f"must hold a '{key}' list (written by {writer})")
    return blob


def read_estimates(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / ESTIMATES_FILE
    if not path.exists():
        raise RefineError(ESTIMATES_FILE, path, f"is missing; run python -m sae_sweep.analyze {sweep_dir} first")
    return _read_list_record(path, ESTIMATES_FILE, "groups", "sae_sweep.analyze")


def read_record(sweep_dir: Path) -> dict[str, Any] | None:
    path = Path(sweep_dir) / RECORD_FILE
    return _read_list_record(path, RECORD_FILE, "rounds", "sae_sweep.refine") if path.exists() else None


def refined_cells(sweep_dir: Path) -> pd.DataFrame:
    """Every (dataset, alpha, J) a refinement round added, with its round (first round wins)."""
    record = read_record(Path(sweep_dir))
    rows = []
    for rnd in (record or {}).get("rounds", []):
        for d in rnd.get("datasets", []):
            plan = DatasetPlan(**{k: d[k] for k in DatasetPlan.__dataclass_fields__ if k in d})
            rows += [{"dataset": plan.dataset, "alpha": float(a), "dict_size": int(j), "round": int(rnd["round"])}
                     for a, j in plan.cells()]
    df = pd.DataFrame(rows, columns=REFINED_COLUMNS)
    df = df.drop_duplicates(["dataset", "alpha", "dict_size"], keep="first").reset_index(drop=True)
    return df.astype({"dataset": str, "alpha": float, "dict_size": int, "round": int})
