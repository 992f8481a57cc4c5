"""Reading a launched job's outcome from its run dir, and the sweep's failure budget."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from sae_sweep.record import FAILED, SUMMARY_FILE, read_json

log = logging.getLogger(__name__)


class SweepAborted(RuntimeError):
    """Too many runs of a sweep failed; finished runs and the results table are kept."""


def job_run_dir(ret: JobReturn) -> Path | None:
    if ret.hydra_cfg is None:
        return None
    return Path(ret.hydra_cfg.hydra.runtime.output_dir)


def job_summary(ret: JobReturn) -> dict:
    """The run's summary.json, or a failed stand-in when the job died before writing one."""
    run_dir = job_run_dir(ret)
    summary = read_json(run_dir / SUMMARY_FILE) if run_dir is not None else None
    if summary is None:
        message = repr(ret._return_value) if ret.status == JobStatus.FAILED else f"no {SUMMARY_FILE}"
        summary = {"status": FAILED, "message": message}
    return summary


class FailureBudget:
    """Counts failed runs; the sweep stops launching once their share exceeds ``max_failure_rate``.

    The share is checked only after ``min_runs`` runs, so one early failure does not end a sweep.
    """

    def __init__(self, max_failure_rate: float, min_runs: int = 4):
        if not 0.0 <= max_failure_rate <= 1.0:
            raise SweepAborted(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
        self.max_failure_rate, self.min_runs = max_failure_rate, min_runs
        self.runs = self.failures = 0

    def add(self, failed: bool, label: str, message: str) -> None:
        self.runs += 1
        if failed:
            self.failures += 1
            log.warning(f"run failed: {label}: {message}")

    @property
    def exceeded(self) -> bool:
        rate = self.failures / max(self.runs, 1)
        return self.failures > 0 and rate > self.max_failure_rate and (
            self.runs >= self.min_runs or self.max_failure_rate == 0.0)

    def message(self) -> str:
        return (f"{self.failures} of {self.runs} runs failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate}; finished runs are kept, see runs.csv")
