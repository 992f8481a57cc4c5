"""The search space, written in Hydra's override grammar, as Optuna distributions.

    alpha: tag(log, interval(1e-3, 1))      log-uniform float
    train.lr: interval(1e-4, 1e-2)          uniform float
    dict_size: choice(128, 256, 512)        categorical (also the plain form 128,256,512)
    seed: range(0, 4)                       integer in [0, 4) (step 1; range(a, b, s) for a step)
    data.n: int(interval(16, 64))           uniform integer in [16, 64]; tag(log, ...) for log scale
Anything else (``train.num_samples=20000``) is a fixed override given to every trial.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sae_sweep.record import single_line
from sae_sweep.sweep.storage import SweepConfigError


def _distribution(o: Override) -> BaseDistribution:
    try:
        return _make_distribution(o)
    except ValueError as exc:  # Optuna's own checks: low <= high, low > 0 on a log scale, ...
        raise SweepConfigError(f"{o.get_key_element()}: search space {o.input_line.split('=', 1)[1]!r} must be a "
                               f"valid range ({single_line(exc)})") from None


def _make_distribution(o: Override) -> BaseDistribution:
    key, value = o.get_key_element(), o.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        assert value.start is not None and value.stop is not None
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            last = value.start + ((value.stop - 1 - value.start) // value.step) * value.step
            return IntDistribution(int(value.start), int(last), step=int(value.step))
        return CategoricalDistribution(list(value.range()))
    if isinstance(value, IntervalSweep):
        assert value.start is not None and value.end is not None
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SweepConfigError(f"{key}: unsupported search space {o.input_line!r}; use choice(...), range(...), "
                           f"interval(a, b), tag(log, interval(a, b)) or int(interval(a, b))")


def parse_space(params: list[str], parser: OverridesParser) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(distributions by key, fixed overrides) from ``key=value`` strings."""
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for o in parser.parse_overrides(params):
        if o.is_sweep_override():
            space[o.get_key_element()] = _distribution(o)
        else:
            fixed.append(o.input_line)
    return space, fixed


def grid_of(space: dict[str, BaseDistribution]) -> dict[str, list[Any]] | None:
    """The grid sampler's search space, or None when some axis is continuous."""
    grid: dict[str, list[Any]] = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            grid[key] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            grid[key] = list(range(d.low, d.high + 1, d.step))
        else:
            return None
    return grid


def as_override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's grammar (quoted where a string would be misread)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)) or value is None:
        text = "null" if value is None else repr(value)
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"
