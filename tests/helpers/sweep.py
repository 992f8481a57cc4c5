"""Builders for the sweep tests: the real CLI in a subprocess, shrunk to seconds-long runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
# A run of a few seconds on one thread (the suite runs two test workers on two cores).
TINY = ["experiment=smoke", "dict_size=32", "data.n=16", "data.h=32", "data.mean_active=3",
        "train.num_samples=5000", "train.eval_every=2500", "train.batch_size=128", "data.eval_size=512",
        "logger.wandb.mode=disabled", "train.threads=1", "train.progress=false", "train.save_weights=false"]


def cli_env() -> dict[str, str]:
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_MODE", None)
    # Each CLI its own W&B service, as a user's: a W&B run of this test process leaves the token of its
    # service here, and a killed CLI's runs would live on in that service.
    env.pop("WANDB_SERVICE", None)
    return env


def sweep_cmd(sweep_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sae_sweep", "-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *args]


def run_sweep(sweep_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m sae_sweep -m TINY ARGS` into ``sweep_dir``, run from the sweep's parent dir."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(sweep_cmd(sweep_dir, *args), cwd=sweep_dir.parent, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_sweep(sweep_dir: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """The same sweep started in the background, in its own process group (so a kill takes its workers)."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(sweep_cmd(sweep_dir, *args), cwd=sweep_dir.parent, env=cli_env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


KILLED = 9  # the exit code of a process ended at a kill point (os._exit(9), sae_sweep/kill.py)


def killed_at(point: str, sweep_dir: Path, *args: str) -> None:
    """The sweep of ``args``, dying at kill point ``point`` (``name`` or ``name:n``, the n-th time)."""
    from sae_sweep.kill import KILL_ENV

    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(sweep_cmd(sweep_dir, *args), cwd=sweep_dir.parent, env={**cli_env(), KILL_ENV: point},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == KILLED, f"exit {proc.returncode}, not killed at {point}\n{proc.stderr[-3000:]}"


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def table(sweep_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(sweep_dir / "runs.parquet")
    csv = pd.read_csv(sweep_dir / "runs.csv")
    assert list(csv.columns) == list(df.columns) and len(csv) == len(df)
    return df


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    # The end-of-sweep analysis logs its failure and lets the sweep succeed; a test must not.
    assert "analysis failed" not in (proc.stderr or "") + (proc.stdout or ""), proc.stderr[-5000:]
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    """Where initdb and postgres live: pg_config's answer, else Debian's versioned directory."""
    import glob
    import shutil

    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql-15)")
    return Path(found[-1]).parent


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 (initdb as user postgres), stopped by its PID."""

    def __init__(self) -> None:
        import pwd
        import shutil
        import tempfile

        self.bindir = pg_bindir()
        pw = pwd.getpwnam("postgres")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="sae_sweep_pg_"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.pid: int | None = None

    def _as_postgres(self) -> None:
        os.setgid(self.gid)
        os.setuid(self.uid)

    def start(self) -> PostgresServer:
        import time

        data = self.dir / "data"
        subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], preexec_fn=self._as_postgres, check=True,
                       capture_output=True, cwd=self.dir)
        proc = subprocess.Popen([str(self.bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                 "-p", str(self.port), "-k", str(self.dir), "-c", "fsync=off",
                                 "-c", "max_connections=100"],
                                preexec_fn=self._as_postgres, cwd=self.dir,
                                stdout=open(self.dir / "server.log", "w"), stderr=subprocess.STDOUT)
        self.pid = proc.pid
        self._proc = proc
        deadline = time.time() + 30
        while time.time() < deadline:
            if subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True).returncode == 0:
                return self
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        import shutil

        if self.pid is not None:
            os.kill(self.pid, signal.SIGINT)  # fast shutdown
            self._proc.wait(timeout=30)
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)
