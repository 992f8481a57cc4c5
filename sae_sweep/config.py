"""Structured configs: the schema of every run, validated once.

The dataclasses are the schema; YAML files in ``conf/`` only fill values. Hydra composes a
``DictConfig`` against them, ``OmegaConf.to_object`` turns it into these dataclasses (running every
``__post_init__``), and nothing below ``__main__`` ever sees a ``DictConfig``.

Every validation error is a :class:`ConfigError` whose message names the field by its full path,
the value given and the range allowed, on one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DECAYS = ("exponential", "zipf", "constant")
L1_NORMS = ("latents", "inputs")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line: field, value, allowed range."""


def _check(ok: bool, path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{path} must be {allowed}, got {value!r}")


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
        _check(_is_int(self.seed) and self.seed >= 0, f"{path}.seed", self.seed, "an integer >= 0")
        _check(
            _is_int(self.eval_size) and self.eval_size >= 1,
            f"{path}.eval_size",
            self.eval_size,
            "an integer >= 1",
        )

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
    """Torch intra-op threads on CPU; 0 keeps torch's default (one per physical core)."""
    progress: bool = True
    """Show a progress bar with live loss and MMCS (hidden when stderr is not a terminal)."""
    save_weights: bool = True
    """Write sae.safetensors and cfg.json into the run dir at the end."""

    def validate(self, path: str = "train") -> None:
        _check(_is_num(self.lr) and self.lr > 0, f"{path}.lr", self.lr, "a number > 0")
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
    """Data source (a config group: data=toy)."""
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
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(
            isinstance(self.name, str) and len(self.name) > 0 and "/" not in self.name,
            "name",
            self.name,
            "a non-empty string without '/'",
        )
        _check(isinstance(self.data, ToyDataConfig), "data", type(self.data).__name__, "a data config (data=toy)")
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
LOSS_NORMALISATION = LOSS_NORMALISATIONS["latents"]


def loss_normalisation(cfg: RunConfig) -> str:
    """The loss this run optimises, in words (recorded in summary.json and cfg.json)."""
    return LOSS_NORMALISATIONS[cfg.sae.l1_norm]


def trainer_alpha(cfg: RunConfig) -> float:
    """The coefficient of mean_{b,j}|c_bj| that the trainer uses for this run's alpha and l1_norm."""
    if cfg.sae.l1_norm == "inputs":
        return cfg.alpha * cfg.dict_size / cfg.data.n
    return cfg.alpha
