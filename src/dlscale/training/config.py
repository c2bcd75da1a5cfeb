"""The training configuration: one typed dataclass, read from TOML, overridden by flags.

Every key mirrors a ``dlscale train`` flag (``--batch-size`` is ``batch_size``). The
run directory gets the fully resolved configuration as ``config.toml``; passing that
file back with ``--config`` reproduces the run. Values are checked when the object
is built, so a bad value fails before any model or data is touched.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dlscale.errors import UserError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")
MONITOR_MODES = ("auto", "min", "max")
LOGGERS = ("none", "tensorboard")
AUGMENTS = ("auto", "none", "standard")
LOSSES = ("auto", "cross_entropy", "mse", "mae", "huber")  # auto: cross_entropy for classes, mse for values
METRICS = ("accuracy", "mae", "mse", "r2")  # accuracy for classes; the rest for values
# NumPy's legacy seed range. Every consumer takes it exactly: random, NumPy (no modulo that
# would make two seeds one), torch, and the batch order's seed * 1_000_003 + epoch (an int64).
MAX_SEED = 2**32 - 1

# Keys that describe one invocation rather than the experiment: they are not written
# to config.toml, so re-running that file starts a new run instead of touching the old.
INVOCATION_KEYS = ("run_dir", "resume", "node_rank", "rdzv_endpoint", "rdzv_id", "master_addr", "master_port", "max_restarts", "max_requeues")


@dataclass
class TrainConfig:
    """Everything that decides what a training run does. ``None`` means "choose for me"."""

    model: str = "cnn"
    data: str = "digits"
    epochs: int = 10
    max_steps: int | None = None  # when set, it wins over epochs
    batch_size: int = 64  # global: summed over all workers
    lr: float | None = None  # None: 1e-3 for AdamW, 0.1 for SGD (scaled by batch/256)
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only
    weight_decay: float | None = None  # None: 0.01 for AdamW, 5e-4 for SGD
    schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 5% of the steps
    grad_clip: float = 0.0  # max global grad norm; 0 turns clipping off
    grad_accum: int = 1  # micro-batches per optimizer step; the batch is split among them
    precision: str = "auto"  # auto: bf16 on a GPU that has it; on a CPU measured (autotune)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    compile: bool | None = None  # None: on for CUDA, off for CPU
    channels_last: bool | None = None  # None: conv nets on CUDA; on a CPU measured (autotune)
    nproc: int = 1
    nnodes: int = 1
    strategy: str = "ddp"
    node_rank: int = 0  # this node's rank, with --master-addr (static rendezvous)
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous for several nodes
    rdzv_id: str | None = None  # the job id every node meets under; None: derived from --run-dir and the endpoint
    master_addr: str | None = None
    master_port: int = 29500
    max_restarts: int = 0  # times the elastic agent restarts the workers after one fails
    max_requeues: int = 10  # times a SLURM job stopped by its time-limit warning requeues itself
    timeout: float = 600.0  # seconds a collective may wait before the job fails
    scale_lr: bool = False  # linear scaling rule: lr x global batch / 256 (Goyal et al. 2017)
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 keeps all
    resume: str | None = None  # "auto" or a run directory
    run_dir: str | None = None
    seed: int = 0
    target_accuracy: float | None = None  # record time to reach this validation accuracy
    log_every: int | None = None  # steps between metric lines; None: about 50 per run
    eval_every_epoch: bool = True
    val_samples: int | None = None  # validate on the first N samples of the validation split; None: all (test: always all)
    synthetic_samples: int | None = None  # training-set size for --data synthetic
    workers: int | None = None  # loader processes for files decoded per sample; None: auto (data.loader.auto_workers)
    augment: str = "auto"  # image folders: auto, none, standard (data.imagefolder)
    image_size: int | None = None  # image folders: the side the model sees; None: 224 or smaller images' own
    skip_bad_files: bool = False  # image folders: pass over unreadable files and count them, instead of stopping
    early_stop_patience: int | None = None  # validations without improvement before stopping; None: off
    monitor: str = "val_loss"  # the validation record's key that early stopping, keep_best and plateau watch
    monitor_mode: str = "auto"  # auto: max for accuracy and r2, min otherwise
    min_delta: float = 0.0  # a smaller change of the monitored metric is no improvement
    keep_best: bool = False  # checkpoints/best at each improvement; its weights are tested and exported
    reduce_lr_patience: int | None = None  # validations without improvement before lr x reduce_lr_factor; None: off
    reduce_lr_factor: float = 0.1
    logger: str = "none"  # none, tensorboard (scalars mirrored into RUN/tb/)
    init_from: str | None = None  # a run directory or checkpoint whose weights start this run (fine-tuning)
    loss: str = "auto"  # auto: cross_entropy for class labels, mse for float targets (LOSSES)
    metrics: str = "auto"  # comma-separated METRICS; auto: accuracy for classes, mae,r2 for values

    def __post_init__(self) -> None:
        _check_types(self)
        positive = ["epochs", "batch_size", "grad_accum", "nproc", "nnodes"]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "log_every", "synthetic_samples", "val_samples", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{_flag(name)} must be at least 1, got {value}")
        for name in ("checkpoint_every", "keep_checkpoints", "workers", "warmup_steps", "node_rank", "max_restarts", "max_requeues"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{_flag(name)} must be 0 or more, got {value}")
        for name in ("lr", "momentum", "weight_decay", "grad_clip", "target_accuracy"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UserError(f"{_flag(name)} must be a finite number, got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be from 0 to {MAX_SEED} (2**32 - 1), got {self.seed}")
        if not 0 < self.timeout < float("inf"):
            raise UserError(f"--timeout is in seconds and must be greater than 0, got {self.timeout}")
        if not 0 < self.master_port < 65536:
            raise UserError(f"--master-port must be a port number (1-65535), got {self.master_port}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"--lr must be greater than 0, got {self.lr}")
        for name in ("momentum", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{_flag(name)} must be 0 or more, got {value}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise UserError(
                f"--target-accuracy is a fraction in (0, 1], got {self.target_accuracy}"
            )
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("monitor_mode", self.monitor_mode, MONITOR_MODES)
        _check_choice("logger", self.logger, LOGGERS)
        _check_choice("augment", self.augment, AUGMENTS)
        for name in ("early_stop_patience", "reduce_lr_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{_flag(name)} must be at least 1 (validations without improvement), got {value}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise UserError(f"--min-delta must be a finite number, 0 or more, got {self.min_delta}")
        if not (math.isfinite(self.reduce_lr_factor) and 0 < self.reduce_lr_factor < 1):
            raise UserError(f"--reduce-lr-factor multiplies the learning rate and must be in (0, 1), got {self.reduce_lr_factor}")
        if not self.monitor.strip():
            raise UserError("--monitor must name a validation metric such as val_loss or val_accuracy")
        _check_choice("loss", self.loss, LOSSES)
        if self.metrics != "auto":
            for name in self.metrics.split(","):
                _check_choice("metrics", name, METRICS)
        if self.batch_size % self.grad_accum:
            raise UserError(
                f"--batch-size {self.batch_size} does not split into --grad-accum "
                f"{self.grad_accum} equal micro-batches; pick a batch size divisible by it"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")


def _expected_types(field: dataclasses.Field) -> tuple[type, ...]:
    """The Python types a field accepts, read from its annotation string."""
    annotation = str(field.type)
    kinds: list[type] = []
    for part in annotation.split("|"):
        part = part.strip()
        kinds += {"int": [int], "float": [float, int], "str": [str], "bool": [bool]}.get(part, [])
    return tuple(kinds)


def _type_name(types: tuple[type, ...]) -> str:
    if float in types:
        return "a number"
    return {int: "an integer", str: "a string", bool: "true or false"}[types[0]]


def _check_types(config: TrainConfig) -> None:
    for field in fields(config):
        value = getattr(config, field.name)
        if value is None:
            if "None" in str(field.type):
                continue
            raise UserError(f"{field.name} must be set; it has no 'choose for me' value")
        types = _expected_types(field)
        # bool is a subclass of int: `batch_size = true` must not pass as 1.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise UserError(
                f"{field.name} must be {_type_name(types)}, got {type(value).__name__} {value!r}"
            )
    if isinstance(config.lr, int):
        config.lr = float(config.lr)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict of known keys, or raise UserError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; give the path to a .toml file")
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    known = set(field_names())
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UserError(
                f"unknown key {key!r} in {path}; valid keys are: {', '.join(sorted(known))}"
            )
        values[name] = value
    return values


def build(file_values: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the config file's values, then explicit overrides (flags)."""
    values = dict(file_values or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("metrics"), (list, tuple)):  # fit(metrics=[...]) and TOML lists
        values["metrics"] = ",".join(map(str, values["metrics"]))
    if overrides.get("max_steps") is None and "epochs" in overrides and overrides["epochs"]:
        # --epochs on the command line beats a max_steps from the file.
        values.pop("max_steps", None)
    return TrainConfig(**values)


def to_toml_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as TOML-writable values: no None (TOML has no null), no invocation keys."""
    return {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if value is not None and name not in INVOCATION_KEYS
    }
