"""Per-trial overhead of the sae_optuna sweeper, per storage: trials/s with a minimal run.

    .venv/bin/python benchmarks/bench_sweeper_overhead.py --trials 40 --out /tmp/overhead \\
        [--storage sqlite] [--storage journal] [--storage postgresql://postgres@127.0.0.1:5432/postgres]

Each storage gets one real multirun (`python -m sae_sweep -m hydra/sweeper=sae_optuna ...`) whose run
trains a 4-latent SAE for a single step. The steady-state rate is measured between the completion of
the first and of the last trial (the first pays the imports); the run's own wall time (summary.json)
is subtracted to give the sweeper's overhead per trial: ask, trial.json, Hydra job setup, tell, and
the job's cell record.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_sweep.record import SUMMARY_FILE  # noqa: E402
from sae_sweep.sweep.storage import open_storage, storage_spec  # noqa: E402

MINIMAL = ["experiment=smoke", "dict_size=4", "data.n=4", "data.h=8", "data.mean_active=2",
           "data.correlation_rank=2", "train.batch_size=16", "train.num_samples=16", "train.eval_every=16",
           "data.eval_size=16", "logger.wandb.mode=disabled", "train.threads=1", "train.progress=false",
           "train.save_weights=false"]


def measure(storage: str, trials: int, out: Path) -> dict[str, float | str]:
    label = storage if storage in ("sqlite", "journal") else storage.split("://")[0]
    sweep = out / label
    spec = {"sqlite": None, "journal": f"journal:{sweep / 'study.log'}"}.get(storage, storage)
    name = f"overhead_{label}_{out.name}"
    cmd = [sys.executable, "-m", "sae_sweep", "-m", *MINIMAL, f"hydra.sweep.dir={sweep}",
           "hydra/sweeper=sae_optuna", "hydra.sweeper.sampler=random", f"hydra.sweeper.n_trials={trials}",
           f"hydra.sweeper.study_name={name}", "alpha=interval(0.01,1)"]
    if spec is not None:
        cmd.append(f"hydra.sweeper.storage='{spec}'")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    study = optuna.load_study(study_name=name, storage=open_storage(storage_spec(spec, sweep)))
    done = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    span = (done[-1].datetime_complete - done[0].datetime_complete).total_seconds()
    rate = (len(done) - 1) / span
    run_s = [json.loads((sweep / f"trial_{t.number:05d}" / SUMMARY_FILE).read_text())["wall_time_s"]
             for t in done[1:]]
    mean_run = sum(run_s) / len(run_s)
    return {"storage": label, "trials_per_s": rate, "per_trial_ms": 1000 / rate, "run_ms": 1000 * mean_run,
            "overhead_ms": 1000 / rate - 1000 * mean_run}


def measure_storage_only(storage: str, trials: int, out: Path) -> float:
    """ms per trial of the sweeper's Optuna bookkeeping alone (no Hydra, no job): the loop's storage calls."""
    import time

    from optuna.distributions import FloatDistribution

    from sae_sweep.sweep.optuna_sweeper import counted
    from sae_sweep.sweep.storage import derived_seed, make_sampler

    label = storage if storage in ("sqlite", "journal") else storage.split("://")[0]
    sweep = out / f"{label}_storage_only"
    spec = {"sqlite": None, "journal": f"journal:{sweep / 'study.log'}"}.get(storage, storage)
    study = optuna.create_study(study_name=f"storage_only_{out.name}", direction="maximize",
                                storage=open_storage(storage_spec(spec, sweep)))
    space = {"alpha": FloatDistribution(0.01, 1.0)}
    t0 = time.perf_counter()
    for _ in range(trials):
        study.sampler = make_sampler("random", derived_seed(0, len(counted(study))), None)
        trial = study.ask(space)
        for k in ("worker", "run_dir", "status"):
            trial.set_user_attr(k, "x")
        study.tell(trial, 0.5)
    return 1000 * (time.perf_counter() - t0) / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--storage", action="append", default=None)
    args = ap.parse_args()
    storages = args.storage or ["sqlite", "journal"]
    rows = [measure(s, args.trials, args.out) for s in storages]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_ms = [measure_storage_only(s, args.trials, args.out) for s in storages]
    print(f"{'storage':<12}{'trials/s':>10}{'ms/trial':>10}{'run ms':>10}{'overhead ms':>13}{'optuna ms':>11}")
    for r, o in zip(rows, optuna_ms, strict=True):
        print(f"{r['storage']:<12}{r['trials_per_s']:>10.2f}{r['per_trial_ms']:>10.1f}{r['run_ms']:>10.1f}"
              f"{r['overhead_ms']:>13.1f}{o:>11.1f}")
    print("overhead = ms/trial - run ms (the run's own wall time); optuna ms = the sweeper's ask/attrs/tell "
          "storage calls alone, the rest is Hydra composing and launching the job")


if __name__ == "__main__":
    main()
