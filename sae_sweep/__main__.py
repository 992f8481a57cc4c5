"""`python -m sae_sweep`: the Hydra entrypoint.

Composes conf/ against the dataclasses in config.py, converts once to a RunConfig, runs it and
returns the objective (final MMCS on toy data, FVU on real activations) so Hydra sweepers can optimise it.

Bad input never produces a traceback: composition errors (unknown key or option, wrong type) and
validation errors (a value out of range) print one line naming the field and exit with code 2
before training starts. A run that does not complete (diverged) exits with code 3 after its
record is written. In a multirun, a failing job raises instead, so the sweeper records it and goes on.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from sae_sweep.config import RunConfig

# A checkout (or editable install) reads conf/ beside the package; an installed wheel carries the
# same files as the package sae_sweep.conf.
_CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
CONF_DIR = str(_CHECKOUT_CONF) if (_CHECKOUT_CONF / "config.yaml").is_file() else "pkg://sae_sweep.conf"
EXIT_BAD_CONFIG = 2
EXIT_RUN_FAILED = 3
# Hydra reports a bad combination of its own flags (e.g. -m with --cfg) as a plain ValueError.
HYDRA_USAGE_ERROR = "Only one of --run, --multirun, --cfg"


def register_configs() -> None:
    """Register the dataclass schemas the YAML files in conf/ extend."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from sae_sweep.config import (
        ActivationsDataConfig,
        LoggerConfig,
        RunConfig,
        SAEConfig,
        ToyDataConfig,
        TrainConfig,
    )

    cs = ConfigStore.instance()
    # RunConfig.data defaults to a ToyDataConfig, which would type the node and refuse any other data
    # schema; the data group fills it, so the schema leaves it open (None) for any of them.
    run_schema = OmegaConf.structured(RunConfig)
    run_schema.data = None
    cs.store(name="run_schema", node=run_schema)
    cs.store(group="data", name="toy_schema", node=ToyDataConfig)
    cs.store(group="data", name="activations_schema", node=ActivationsDataConfig)
    cs.store(group="sae", name="relu_schema", node=SAEConfig)
    cs.store(group="train", name="default_schema", node=TrainConfig)
    cs.store(group="logger", name="default_schema", node=LoggerConfig)


def _die(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"sae_sweep: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def one_line(exc: BaseException) -> str:
    """Collapse a Hydra/OmegaConf error (and its cause) into one line that still names the field."""
    parts: list[str] = []
    seen: set[str] = set()
    e: BaseException | None = exc
    while e is not None and len(parts) < 6:
        for line in str(e).splitlines():
            line = line.strip()
            m = re.match(r"full_key:\s*(\S+)", line)
            if m:
                line = f"(field {m.group(1)})"
            elif not line or line.startswith(("object_type=", "reference_type=")):
                continue
            line = line.split(" Config search path:")[0]  # Hydra's list of search paths helps no user
            if line not in seen:
                seen.add(line)
                parts.append(line)
        e = e.__cause__
    return " ".join(parts) or type(exc).__name__


def _task(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sae_sweep.config import ConfigError
    from sae_sweep.run import RunFailed, format_summary, run
    from sae_sweep.sweep.job import job_objective, multirun_job, to_run_config

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        job = multirun_job(cfg)
        summary = run(job.cfg, job.run_dir, run_name=job.run_name, group=job.group, should_stop=job.should_stop,
                      extra_sinks=job.extra_sinks, trial=job.trial)
        return job_objective(summary, job.run_dir)
    run_dir = Path(hc.runtime.output_dir)
    try:
        run_cfg = to_run_config(cfg)
    except ConfigError as exc:
        _remove_fresh_run_dir(run_dir)
        _die(str(exc), EXIT_BAD_CONFIG)
    run_dir = _resumable_run_dir(run_cfg, run_dir)
    summary = run(run_cfg, run_dir, run_name=hc.job.override_dirname or run_cfg.name, group=run_cfg.name)
    print(format_summary(summary, run_dir))
    try:
        return job_objective(summary, run_dir)
    except RunFailed as exc:
        _die(str(exc), EXIT_RUN_FAILED)


def _resumable_run_dir(run_cfg: RunConfig, run_dir: Path) -> Path:
    """Where a single run trains: its fresh run dir, or (its dir being named by the start time) the newest
    sibling holding a checkpoint of the same config that a killed run of this command left; the fresh
    dir is then removed. So the same command re-run after a kill continues that run (checkpoint.py)."""
    from sae_sweep.checkpoint import config_key, find_resumable
    from sae_sweep.record import CHECKPOINT_FILE

    if (run_dir / CHECKPOINT_FILE).is_file():
        return run_dir
    previous = find_resumable(run_dir.parent, config_key(run_cfg), run_dir)
    if previous is None:
        return run_dir
    _remove_fresh_run_dir(run_dir)
    sys.stderr.write(f"sae_sweep: continuing the run killed in {previous}\n")
    return previous


def _remove_fresh_run_dir(run_dir: Path) -> None:
    """A rejected single run leaves nothing: Hydra made its dir (.hydra/ and the job's log) just now."""
    import shutil

    if not run_dir.is_dir() or any(p.name not in (".hydra", "__main__.log") for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:  # outputs/<name>/runs/, outputs/<name>/, outputs/ when now empty
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def main() -> None:
    # Let composition errors reach us instead of Hydra's multi-line report, so we can print one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sae_sweep.config import ConfigError

    register_configs()
    entry = hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")(_task)
    from sae_sweep.sweep.outcome import SweepAborted
    from sae_sweep.sweep.storage import SweepConfigError

    try:
        entry()
    except SweepAborted as exc:
        _die(str(exc), EXIT_RUN_FAILED)
    except (ConfigError, SweepConfigError) as exc:
        _die(str(exc), EXIT_BAD_CONFIG)
    except (HydraException, OmegaConfBaseException) as exc:
        _die(one_line(exc), EXIT_BAD_CONFIG)
    except ValueError as exc:
        if not str(exc).startswith(HYDRA_USAGE_ERROR):  # anything else is a bug: keep its traceback
            raise
        _die(str(exc), EXIT_BAD_CONFIG)


if __name__ == "__main__":
    main()
