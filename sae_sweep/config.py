"""Structured configs: the schema of every run, validated once.

The dataclasses are the schema; YAML files in ``conf/`` only fill values. Hydra composes a
``DictConfig`` against them, ``OmegaConf.to_object`` turns it into these dataclasses (running every
``__post_init__``), and nothing below ``__main__`` ever sees a ``DictConfig``.

Every validation error is a :class:`ConfigError` whose message names the field by its full path,
the value given and the range allowed, on one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_sweep.activation_file import (
    ActivationFileError,
    activation_file_shape,
    check_finite_rows,
    read_activation_metadata,
    sidecar_path,
)

DECAYS = ("exponential", "zipf", "constant")
L1_NORMS = ("latents", "inputs")
WANDB_MODES = ("offline", "online", "disabled")
SCALES = ("none", "unit_norm")
MAX_SEED = 2**63 - 1  # every seed fits a signed 64-bit column of the results table (and torch's generator)
# The final metrics every summary.json holds (null where a run has none, e.g. mmcs without ground truth):
# what an Optuna study may optimise.
SUMMARY_METRICS = ("mmcs", "mmcs_learned", "recovered_90", "recovered_99", "loss", "mse", "l1", "l1_sum", "fvu",
                   "l0", "dead", "alive")


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line: field, value, allowed range."""


def _check(ok: bool, path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{path} must be {allowed}, got {value!r}")


@contextmanager
def _file_field(path: str) -> Iterator[None]:
    """An unusable activation file as the ConfigError of the field that names it."""
    try:
        yield
    except ActivationFileError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class ToyDataConfig:
    """Synthetic activations y = F x with known ground-truth features F (Sharkey et al. 2022)."""

    kind: str = "toy"
    """Data source discriminator; always 'toy' here."""
    n: int = 256
    """Dimension of each observed activation vector y."""
    h: int = 512
    """Number of ground-truth features: F has h unit-norm columns in R^n."""
    mean_active: float = 5.0
    """Expected number of active features per sample, counting the one forced into empty samples."""
    decay: str = "exponential"
    """How firing probability falls with feature index i: exponential (decay_rate**i), zipf ((i+1)**-zipf_exponent) or constant."""
    decay_rate: float = 0.99
    """Base of the exponential decay, in (0, 1]; 1 makes every feature equally likely."""
    zipf_exponent: float = 1.0
    """Exponent s of the zipf decay, >= 0."""
    correlation: float = 0.5
    """Share in [0, 1] of each feature's latent Gaussian variance that comes from common factors; 0 = independent firing."""
    correlation_rank: int = 16
    """Number of common Gaussian factors behind the random latent correlation matrix."""
    magnitude_decay: float = 1.0
    """An active feature i has magnitude U[0, magnitude_decay**i]; in (0, 1], 1 = U[0, 1] for all."""
    noise_std: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to each coordinate of y, >= 0."""
    seed: int = 0
    """Seed of the ground truth (F, probabilities, correlation) and of the held-out eval set."""
    eval_size: int = 16384
    """Number of held-out samples every evaluation runs on (the same set for every run of this data)."""

    def validate(self, path: str = "data") -> None:
        _check(self.kind == "toy", f"{path}.kind", self.kind, "'toy'")
        _check(_is_int(self.n) and self.n >= 1, f"{path}.n", self.n, "an integer >= 1")
        _check(_is_int(self.h) and self.h >= 1, f"{path}.h", self.h, "an integer >= 1")
        _check(
            _is_num(self.mean_active) and 1.0 < self.mean_active <= self.h,
            f"{path}.mean_active",
            self.mean_active,
            f"in (1, data.h={self.h}]",
        )
        _check(self.decay in DECAYS, f"{path}.decay", self.decay, f"one of {', '.join(DECAYS)}")
        _check(
            _is_num(self.decay_rate) and 0.0 < self.decay_rate <= 1.0,
            f"{path}.decay_rate",
            self.decay_rate,
            "in (0, 1]",
        )
        _check(
            _is_num(self.zipf_exponent) and self.zipf_exponent >= 0.0,
            f"{path}.zipf_exponent",
            self.zipf_exponent,
            ">= 0",
        )
        _check(
            _is_num(self.correlation) and 0.0 <= self.correlation <= 1.0,
            f"{path}.correlation",
            self.correlation,
            "in [0, 1]",
        )
        _check(
            _is_int(self.correlation_rank) and self.correlation_rank >= 1,
            f"{path}.correlation_rank",
            self.correlation_rank,
            "an integer >= 1",
        )
        _check(
            _is_num(self.magnitude_decay) and 0.0 < self.magnitude_decay <= 1.0,
            f"{path}.magnitude_decay",
            self.magnitude_decay,
            "in (0, 1]",
        )
        _check(_is_num(self.noise_std) and self.noise_std >= 0.0, f"{path}.noise_std", self.noise_std, ">= 0")
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, f"{path}.seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _check(
            _is_int(self.eval_size) and self.eval_size >= 1,
            f"{path}.eval_size",
            self.eval_size,
            "an integer >= 1",
        )

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class ActivationsDataConfig:
    """Real activation vectors: a 2-D (rows, n) float16/float32 .npy file, memory-mapped and streamed.

    The last ``eval_size`` rows are the held-out eval set; the rows before them are the training rows.
    An optional sidecar ``<path>.json`` (e.g. ``acts.npy.json``) holds metadata such as model, layer,
    tokens and the per-dimension ``mean``.
    """

    kind: str = "activations"
    """Data source discriminator; always 'activations' here."""
    path: str = ""
    """The .npy file of activations, shape (rows, n). A relative path resolves against the current
    working directory at validation, and the absolute path is stored."""
    n: int = 0
    """Dimension of each activation vector; 0 = read from the file, otherwise it must equal the file's width."""
    eval_size: int = 16384
    """Rows held out for evaluation: the last eval_size rows of the file, never used for training."""
    center: bool = True
    """Subtract the per-dimension mean of the training rows from training and eval batches alike. The
    mean is the sidecar JSON's "mean" when present, else computed from the first (up to 65536) training rows."""
    scale: str = "none"
    """none, or unit_norm: after centring, divide every vector (training and eval alike) by one constant
    so that the mean squared norm of the training rows is n (E||y||^2 = n), computed from the first
    (up to 65536) training rows like the mean."""
    chunk_rows: int = 65536
    """Rows read contiguously from the memory-mapped file at a time."""
    shuffle_chunks: int = 4
    """That many randomly chosen chunks are read and shuffled together in memory, so a batch mixes
    distant parts of the file. The run's top-level seed fixes the order."""

    def validate(self, path: str = "data") -> None:
        _check(self.kind == "activations", f"{path}.kind", self.kind, "'activations'")
        _check(
            isinstance(self.path, str) and len(self.path) > 0 and Path(self.path).is_file(),
            f"{path}.path",
            self.path,
            "an existing .npy file",
        )
        self.path = str(Path(self.path).resolve())
        _check(_is_int(self.n) and self.n >= 0, f"{path}.n", self.n, "an integer >= 0 (0 = read from the file)")
        _check(
            _is_int(self.eval_size) and self.eval_size >= 1,
            f"{path}.eval_size",
            self.eval_size,
            "an integer >= 1",
        )
        _check(isinstance(self.center, bool), f"{path}.center", self.center, "true or false")
        _check(self.scale in SCALES, f"{path}.scale", self.scale, f"one of {', '.join(SCALES)}")
        _check(
            _is_int(self.chunk_rows) and self.chunk_rows >= 1,
            f"{path}.chunk_rows",
            self.chunk_rows,
            "an integer >= 1",
        )
        _check(
            _is_int(self.shuffle_chunks) and self.shuffle_chunks >= 1,
            f"{path}.shuffle_chunks",
            self.shuffle_chunks,
            "an integer >= 1",
        )
        with _file_field(f"{path}.path"):
            rows, width = activation_file_shape(self.path)
        if rows < 2:
            raise ConfigError(f"{path}.path: {self.path} has {rows} rows; it needs at least 2 (the last "
                              f"{path}.eval_size rows are held out, the rest train)")
        _check(
            self.eval_size < rows,
            f"{path}.eval_size",
            self.eval_size,
            f"an integer in [1, {rows - 1}] (fewer than the file's {rows} rows; the rest train)",
        )
        if self.n == 0:
            self.n = width
        _check(self.n == width, f"{path}.n", self.n, f"0 (read from the file) or the file's width {width}")
        with _file_field(f"{path}.path"):
            meta = read_activation_metadata(self.path)
        if "mean" in meta:
            mean = meta["mean"]
            ok = isinstance(mean, list) and len(mean) == width and all(_is_num(v) for v in mean)
            if not ok:
                raise ConfigError(
                    f"{path}.path: the \"mean\" in {sidecar_path(self.path)} must be a list of {width} finite numbers"
                )
        with _file_field(f"{path}.path"):
            check_finite_rows(self.path)

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class SAEConfig:
    """Architecture of z(y) = D ReLU(W y + b_enc) + b_dec, decoder columns kept at unit norm."""

    decoder_bias: bool = True
    """Learn a decoder bias b_dec (also subtracted from y before encoding)."""
    init_scale: float = 1.0
    """The encoder starts as init_scale times the transpose of the (random, unit-norm) decoder."""
    l1_norm: str = "latents"
    """What the L1 term is divided by: latents (mean |c| over batch and J latents, the replication's
    convention, so alpha's per-latent weight shrinks as J grows) or inputs (sum |c| over latents divided
    by the input dim n, i.e. the per-sample lasso ||z - y||^2 + alpha ||c||_1, the same for every J;
    use it to compare dictionary sizes at one alpha, as the feature-count estimators do)."""

    def validate(self, path: str = "sae") -> None:
        _check(isinstance(self.decoder_bias, bool), f"{path}.decoder_bias", self.decoder_bias, "true or false")
        _check(
            _is_num(self.init_scale) and self.init_scale > 0,
            f"{path}.init_scale",
            self.init_scale,
            "a number > 0",
        )
        _check(self.l1_norm in L1_NORMS, f"{path}.l1_norm", self.l1_norm, f"one of {', '.join(L1_NORMS)}")

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class TrainConfig:
    """Optimisation and evaluation schedule."""

    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Samples per optimiser step."""
    num_samples: int = 3_000_000
    """Training budget in samples (the number of steps is num_samples // batch_size)."""
    eval_every: int = 250_000
    """Evaluate on the held-out set every this many training samples (and at the end)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N, or auto (cuda when available)."""
    threads: int = 0
    """Torch intra-op threads on CPU; 0 = the thread policy (sae_sweep/threads.py): torch's default (one per
    physical core) for a large-step process alone, dropping to one while another process is busy; one for
    a small step; the usable cores shared among a joblib launcher's concurrent workers."""
    progress: bool = True
    """Show a progress bar with live loss and MMCS (hidden when stderr is not a terminal)."""
    save_weights: bool = True
    """Write sae.safetensors and cfg.json into the run dir at the end."""
    batch_seed: int | None = None
    """Seed of the training batch stream; null = the run's seed (every seed sees its own stream). Setting
    it (e.g. 0) gives every run of a sweep the same batches (the packed launcher packs runs of different
    streams together either way: each member reads its own)."""
    lanes: int = 0
    """When several SAEs train as a pack: how many step concurrently, each lane on one core with one torch
    thread (0 = one lane per torch thread). On CPU this beats multi-threaded GEMMs of small SAEs; 1 = the
    members one after another with all threads."""
    converge: bool = False
    """Stop each run (each member of a pack on its own) once it has converged (``sae_sweep/convergence.py``):
    the eval loss's relative change and the alive decoder atoms' drift, both per million samples, below
    ``converge_loss_rtol`` and ``converge_drift`` for ``converge_patience`` evaluations in a row;
    ``num_samples`` is then the cap. Off, runs train to ``num_samples`` and still record whether they
    converged (``converged`` in summary.json and runs.parquet)."""
    converge_loss_rtol: float = 0.005
    """Flat loss: |relative change of the eval loss| per million samples at most this."""
    converge_drift: float = 0.015
    """Settled atoms: mean (1 - cos) of each alive atom with itself one evaluation earlier, per million
    samples, at most this."""
    converge_patience: int = 2
    """Consecutive evaluations both criteria must hold for."""
    stacked: str = "auto"
    """How a pack's members step (``sae_sweep/packing.py``): ``auto`` steps small SAEs (B n J <= 2^21) as
    stacked batched computations, members of different J padded to their bucket's largest with latents
    that never fire, seeds and alphas mixed; large ones member by member (with the sparse path);
    ``always`` / ``never`` force either. Same records to float tolerance either way."""
    sparse_below: float | None = None
    """A member whose measured L0 / J is below this takes the sparse-aware step (step.py); 0 = always dense;
    null = the measured crossover for where the step runs (``step.auto_sparse_below``: 0.15 on one torch
    thread, as in every packed lane, 0.09 with more, dense on CUDA). Both steps compute the same
    gradients; the sparse one is faster when few latents fire."""
    checkpoint_every: int = 1_000_000
    """Write a checkpoint (weights, Adam state, batch-stream position, RNG states, metrics so far) every
    this many training samples, so that the same command re-run after a kill or a requeue resumes from
    it (``sae_sweep/checkpoint.py``); 0 = never. The default costs a file write of the weights and
    Adam's two moments per million samples (milliseconds at the sizes here, against tens of seconds or
    more of training) and leaves runs below a million samples (smoke runs, tests) without one."""
    keep_checkpoint: bool = False
    """Keep the last checkpoint after the run has ended (completed, diverged or pruned); by default it
    is deleted then. An interrupted or failed run keeps it, for a re-run to resume from; the Optuna sweeper
    removes a FAIL trial's (nothing re-runs it) unless this is set."""

    def validate(self, path: str = "train") -> None:
        _check(_is_num(self.lr) and self.lr > 0, f"{path}.lr", self.lr, "a number > 0")
        _check(self.batch_seed is None or (_is_int(self.batch_seed) and 0 <= self.batch_seed <= MAX_SEED),
               f"{path}.batch_seed", self.batch_seed, f"null or an integer in [0, {MAX_SEED}]")
        _check(_is_int(self.lanes) and self.lanes >= 0, f"{path}.lanes", self.lanes, "an integer >= 0")
        _check(self.stacked in ("auto", "always", "never"), f"{path}.stacked", self.stacked,
               "one of auto, always, never")
        _check(self.sparse_below is None or (_is_num(self.sparse_below) and 0.0 <= self.sparse_below <= 1.0),
               f"{path}.sparse_below", self.sparse_below, "null or a number in [0, 1]")
        _check(
            _is_int(self.batch_size) and self.batch_size >= 1,
            f"{path}.batch_size",
            self.batch_size,
            "an integer >= 1",
        )
        _check(
            _is_int(self.num_samples) and self.num_samples >= self.batch_size,
            f"{path}.num_samples",
            self.num_samples,
            f"an integer >= train.batch_size={self.batch_size}",
        )
        _check(
            _is_int(self.eval_every) and self.eval_every >= 1,
            f"{path}.eval_every",
            self.eval_every,
            "an integer >= 1",
        )
        _check(
            isinstance(self.device, str)
            and (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")),
            f"{path}.device",
            self.device,
            "one of cpu, cuda, cuda:N, auto",
        )
        _check(_is_int(self.threads) and self.threads >= 0, f"{path}.threads", self.threads, "an integer >= 0")
        _check(isinstance(self.converge, bool), f"{path}.converge", self.converge, "true or false")
        _check(_is_num(self.converge_loss_rtol) and 0 < self.converge_loss_rtol <= 1, f"{path}.converge_loss_rtol",
               self.converge_loss_rtol, "a number in (0, 1]")
        _check(_is_num(self.converge_drift) and 0 < self.converge_drift <= 1, f"{path}.converge_drift",
               self.converge_drift, "a number in (0, 1]")
        _check(_is_int(self.converge_patience) and 1 <= self.converge_patience <= 100, f"{path}.converge_patience",
               self.converge_patience, "an integer in [1, 100]")
        _check(_is_int(self.checkpoint_every) and self.checkpoint_every >= 0, f"{path}.checkpoint_every",
               self.checkpoint_every, "an integer >= 0 (samples; 0 = no checkpoints)")
        _check(isinstance(self.keep_checkpoint, bool), f"{path}.keep_checkpoint", self.keep_checkpoint,
               "true or false")

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class WandbConfig:
    """The W&B mirror of a run's record (the files in the run dir are the record itself)."""

    mode: str = "offline"
    """offline (default; sync later with `wandb sync`), online, or disabled."""
    project: str = "sae_sweep"
    """W&B project name."""
    entity: str | None = None
    """W&B entity (user or team); None uses the account default."""
    group: str | None = None
    """Run group; None uses the sweep name."""
    tags: list[str] = field(default_factory=list)
    """Extra tags for the run."""

    def validate(self, path: str = "logger.wandb") -> None:
        _check(self.mode in WANDB_MODES, f"{path}.mode", self.mode, f"one of {', '.join(WANDB_MODES)}")
        _check(
            isinstance(self.project, str) and len(self.project) > 0,
            f"{path}.project",
            self.project,
            "a non-empty string",
        )


@dataclass
class LoggerConfig:
    """Where metrics go: metrics.jsonl in the run dir always, W&B optionally."""

    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self, path: str = "logger") -> None:
        self.wandb.validate(f"{path}.wandb")

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class RunConfig:
    """One training run: an SAE of dict_size latents with L1 coefficient alpha on one data source."""

    alpha: float = 0.1
    """L1 coefficient. Loss = mean over batch and input dims of (z - y)^2 + alpha * mean over batch and latents of |c|."""
    dict_size: int = 1024
    """Dictionary size J: the number of latents (decoder columns)."""
    seed: int = 0
    """Seed of the SAE initialisation and of the training batch stream."""
    name: str = "default"
    """Name of the run or sweep; run and sweep dirs live under outputs/<name>/."""
    data: Any = field(default_factory=ToyDataConfig)
    """Data source (a config group: data=toy or data=activations); a ToyDataConfig or ActivationsDataConfig."""
    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def validate(self) -> None:
        _check(_is_num(self.alpha) and self.alpha >= 0, "alpha", self.alpha, "a finite number >= 0")
        _check(
            _is_int(self.dict_size) and self.dict_size >= 1,
            "dict_size",
            self.dict_size,
            "a positive integer",
        )
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _check(
            isinstance(self.name, str) and len(self.name) > 0 and "/" not in self.name,
            "name",
            self.name,
            "a non-empty string without '/'",
        )
        _check(
            isinstance(self.data, (ToyDataConfig, ActivationsDataConfig)),
            "data",
            type(self.data).__name__,
            "a data config (data=toy or data=activations)",
        )
        self.data.validate()
        self.sae.validate()
        self.train.validate()
        self.logger.validate()

    def __post_init__(self) -> None:
        self.validate()


LOSS_NORMALISATIONS = {
    "latents": (
        "loss = mean_{b,i} (z_bi - y_bi)^2 + alpha * mean_{b,j} |c_bj|: "
        "reconstruction is the element-mean squared error over batch and input dims, "
        "L1 is the mean over batch and dictionary latents (so the L1 term is divided by J)"
    ),
    "inputs": (
        "loss = mean_{b,i} (z_bi - y_bi)^2 + alpha * mean_b sum_j |c_bj| / n: "
        "the per-sample lasso ||z - y||^2 + alpha ||c||_1 divided by the input dim n "
        "(the L1 term does not depend on J)"
    ),
}


def loss_normalisation(cfg: RunConfig) -> str:
    """The loss this run optimises, in words (recorded in summary.json and cfg.json)."""
    return LOSS_NORMALISATIONS[cfg.sae.l1_norm]


def trainer_alpha(cfg: RunConfig) -> float:
    """The coefficient of mean_{b,j}|c_bj| that the trainer uses for this run's alpha and l1_norm."""
    if cfg.sae.l1_norm == "inputs":
        return cfg.alpha * cfg.dict_size / cfg.data.n
    return cfg.alpha
