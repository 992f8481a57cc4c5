"""Optuna storages, samplers and pruners built from the sweeper's plain config values.

Storage spec: None -> an SQLite file ``optuna.db`` in the sweep dir; ``journal:<path>`` or a path
ending in ``.log``/``.journal`` -> a journal file (safe for several processes on one machine, no
server); anything else is an RDB URL (``sqlite:///…``, ``postgresql://…``) for many machines.
Specs are made absolute once in the sweeper, so a job in another process or machine opens the same.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sae_sweep.record import OPTUNA_DB, single_line

JOURNAL_PREFIX = "journal:"
SAMPLERS = ("tpe", "random", "grid", "nsgaii")
PRUNERS = ("none", "median", "successive_halving", "hyperband")


class SweepConfigError(ValueError):
    """A sweeper setting that cannot work; the message is one line naming the field."""


def storage_spec(storage: str | None, sweep_dir: Path) -> str:
    """An absolute, process-independent spelling of ``storage``."""
    if not storage:
        return f"sqlite:///{(Path(sweep_dir) / OPTUNA_DB).resolve()}"
    if storage.startswith(JOURNAL_PREFIX) or storage.endswith((".log", ".journal")):
        path = storage[len(JOURNAL_PREFIX):] if storage.startswith(JOURNAL_PREFIX) else storage
        return JOURNAL_PREFIX + str(Path(path).expanduser().resolve())
    if "://" not in storage:
        raise SweepConfigError(f"hydra.sweeper.storage must be null, journal:<path>, a .log path or an "
                               f"RDB URL such as sqlite:///x.db or postgresql://…, got {storage!r}")
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        return f"sqlite:///{Path(storage[len('sqlite:///'):]).resolve()}"
    return storage


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    if spec.startswith(JOURNAL_PREFIX):
        path = Path(spec[len(JOURNAL_PREFIX):])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {}
    if spec.startswith("sqlite:"):
        Path(spec[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # Several processes (joblib workers, a second sweeper) write one file: wait for the lock.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(spec, **kwargs)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` after the last point, which raises outside
    ``study.optimize``; the sweeper stops by itself once every point has finished."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        return None

    def all_finished(self, trials: Sequence[FrozenTrial]) -> bool:
        """Every grid point has a finished trial among ``trials`` (by params, so a retry counts for its point)."""
        keys = list(self._search_space)
        points = {tuple(p) for p in itertools.product(*(self._search_space[k] for k in keys))}
        done = {tuple(t.params.get(k) for k in keys) for t in trials if t.state.is_finished()}
        return points <= done


def derived_seed(seed: int | None, n_trials_so_far: int) -> int | None:
    """A sampler seed that differs after a restart: a fixed seed would re-propose the same points."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{n_trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(name: str, seed: int | None, grid: dict[str, list[Any]] | None,
                 kwargs: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    kwargs = dict(kwargs or {})
    if name == "grid" and grid is None:
        raise SweepConfigError("hydra.sweeper.sampler=grid needs every parameter to be choice(...) or "
                               "range(...), not interval(...)")
    makers: dict[str, Any] = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                              "nsgaii": optuna.samplers.NSGAIISampler,
                              "grid": lambda seed, **kw: AskTellGridSampler(grid, seed=seed, **kw)}
    if name not in makers:
        raise SweepConfigError(f"hydra.sweeper.sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return _construct("sampler", name, lambda: makers[name](seed=seed, **kwargs), kwargs)


def _construct(what: str, name: str, make: Any, kwargs: dict[str, Any]) -> Any:
    """Build an Optuna sampler or pruner; a keyword or value it refuses becomes one line naming the field."""
    try:
        return make()
    except (TypeError, ValueError) as exc:
        raise SweepConfigError(f"hydra.sweeper.{what}_kwargs must be keyword arguments the {name} {what} takes, "
                               f"got {kwargs} ({single_line(exc)})") from None


def make_pruner(name: str | None, kwargs: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    kwargs = dict(kwargs or {})
    makers: dict[str, Any] = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
                              "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
                              "hyperband": optuna.pruners.HyperbandPruner}
    key = "none" if name is None else name
    if key not in makers:
        raise SweepConfigError(f"hydra.sweeper.pruner must be one of {', '.join(PRUNERS)}, got {name!r}")
    return _construct("pruner", key, lambda: makers[key](**kwargs), kwargs)
