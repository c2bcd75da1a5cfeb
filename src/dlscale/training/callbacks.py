"""What the loop does after a validation, and the hooks a user's own callbacks get.

Built in, each with one job, each driven by ``on_validation(record)`` with the ``val``
line just written to metrics.jsonl:

- ``EarlyStopping``: --early-stop-patience validations without improvement stop the run
  (which then ends as a finished one: last checkpoint, test, summary);
- ``BestKeeper``: --keep-best saves ``checkpoints/best`` whenever the monitored metric
  improves, and puts those weights back before the test (Keras ``restore_best_weights``);
- ``PlateauLR``: --reduce-lr-patience validations without improvement multiply the
  learning rate by --reduce-lr-factor (Keras ``ReduceLROnPlateau``).

They share one ``Monitor`` (the metric, its best value and step). Their counters live in
``TrainState.callbacks`` as plain numbers, so a checkpoint carries them and a resumed run
decides exactly as an uninterrupted one.

A user callback is any object with some of ``on_train_start(run)``,
``on_step_end(run, step, logs)``, ``on_epoch_end(run, epoch, logs)`` and
``on_train_end(run, summary)``; ``run`` (a ``Run``) gives step, epoch, model, optimizer,
run_dir, and ``stop_training``, which a callback sets True to end the run after this step
or epoch (Keras semantics: saved, tested and summarised like a finished run).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import torch

from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.training.config import TrainConfig

NEEDS_VALIDATION = ("early_stop_patience", "keep_best", "reduce_lr_patience")
USER_HOOKS = ("on_train_start", "on_step_end", "on_epoch_end", "on_train_end")


def check_validation(config: TrainConfig, has_val: bool) -> None:
    """A flag that needs validation, on data without a validation set, is refused before training."""
    wanted = [name for name in NEEDS_VALIDATION if getattr(config, name) not in (None, False)]
    if not wanted:
        return
    flag = "--" + wanted[0].replace("_", "-")
    if not config.eval_every_epoch:
        raise UserError(f"{flag} needs a validation after each epoch, but eval_every_epoch is off; turn it on, or drop {flag}")
    if not has_val:
        raise UserError(
            f"{flag} needs a validation set, and data {config.data} has none; give one (fit(..., val_data=...) "
            f"or validation_split=0.1), or drop {flag}"
        )


def resolve_mode(metric: str, mode: str) -> str:
    """auto: higher is better for accuracy and R², lower for everything else (losses, MAE)."""
    if mode != "auto":
        return mode
    return "max" if "accuracy" in metric or metric.endswith("r2") else "min"


class Monitor:
    """The monitored metric of the validation records: whether the newest improved on the
    best by more than ``min_delta``, and the best value and step so far."""

    def __init__(self, config: TrainConfig, saved: dict[str, Any]) -> None:
        self.metric = config.monitor
        self.mode = resolve_mode(config.monitor, config.monitor_mode)
        self.min_delta = config.min_delta
        self.best: float | None = saved.get("best_value")
        self.best_step: int | None = None if saved.get("best_step") is None else int(saved["best_step"])
        self.improved = False  # whether the newest validation improved

    def update(self, record: dict[str, Any]) -> None:
        value = record.get(self.metric)
        if self.metric not in record or isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            numeric = sorted(k for k, v in record.items() if isinstance(v, float))
            raise UserError(f"--monitor {self.metric} is not in the validation record; monitor one of {', '.join(numeric)}")
        sign = 1.0 if self.mode == "min" else -1.0  # None (R² of constant targets) or NaN is no improvement
        self.improved = value is not None and math.isfinite(value) and (
            self.best is None or sign * (self.best - value) > self.min_delta)
        if self.improved:
            self.best, self.best_step = float(value), int(record["step"])

    def state(self) -> dict[str, Any]:
        return {"best_value": self.best, "best_step": self.best_step}


class EarlyStopping:
    """Stop after ``patience`` validations in a row without improvement."""

    def __init__(self, monitor: Monitor, patience: int, saved: dict[str, Any]) -> None:
        self.monitor, self.patience = monitor, patience
        self.wait = int(saved.get("early_stop_wait", 0))
        self.fired = False

    def on_validation(self, record: dict[str, Any]) -> None:
        self.wait = 0 if self.monitor.improved else self.wait + 1
        self.fired = self.wait >= self.patience

    def state(self) -> dict[str, Any]:
        return {"early_stop_wait": self.wait}


class PlateauLR:
    """Multiply the learning rate by ``factor`` after ``patience`` validations without
    improvement, then wait another ``patience``. The schedule (LambdaLR) keeps working: its
    base rates are scaled, and the optimizer's current rate too, so the next step uses it."""

    def __init__(self, monitor: Monitor, scheduler: torch.optim.lr_scheduler.LambdaLR, patience: int, factor: float,
                 saved: dict[str, Any]) -> None:
        self.monitor, self.scheduler, self.patience, self.factor = monitor, scheduler, patience, factor
        self.wait = int(saved.get("plateau_wait", 0))

    def on_validation(self, record: dict[str, Any]) -> None:
        self.wait = 0 if self.monitor.improved else self.wait + 1
        if self.wait >= self.patience:
            scheduler = self.scheduler
            scheduler.base_lrs = [lr * self.factor for lr in scheduler.base_lrs]
            for group in scheduler.optimizer.param_groups:
                group["lr"] *= self.factor
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
            self.wait = 0

    def state(self) -> dict[str, Any]:
        return {"plateau_wait": self.wait}


class BestKeeper:
    """Save ``checkpoints/best`` whenever the monitored metric improves; ``restore()`` puts
    those weights back. ``save``/``load`` are the checkpointer's (a collective)."""

    def __init__(self, monitor: Monitor, checkpointer: Any) -> None:
        self.monitor, self.checkpointer = monitor, checkpointer

    def on_validation(self, record: dict[str, Any]) -> None:
        if self.monitor.improved:
            self.checkpointer.save_best(int(record["step"]))

    def restore(self) -> None:
        if self.monitor.best_step is not None:
            self.checkpointer.restore_best()

    def state(self) -> dict[str, Any]:
        return {}


class Callback(Protocol):
    """A user callback implements any of these (the rest are not called)."""

    def on_train_start(self, run: "Run") -> None: ...
    def on_step_end(self, run: "Run", step: int, logs: dict[str, Any]) -> None: ...
    def on_epoch_end(self, run: "Run", epoch: int, logs: dict[str, Any]) -> None: ...
    def on_train_end(self, run: "Run", summary: dict[str, Any]) -> None: ...


class Run:
    """What a user callback sees of the run; setting ``stop_training`` ends it after this
    step or epoch."""

    def __init__(self, job: Any, state: Any) -> None:
        self._job, self._state = job, state
        self.epoch = 0
        self.stop_training = False

    @property
    def step(self) -> int:
        return self._state.step

    @property
    def model(self) -> torch.nn.Module:
        return self._job.stepper.raw_model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._job.stepper.optimizer

    @property
    def run_dir(self) -> Path:
        return self._job.run_dir

    @property
    def config(self) -> TrainConfig:
        return self._job.config


class CallbackList:
    """The built-in callbacks the config asks for and the user's, called by the loop at
    its events; ``should_stop`` says the run ends now."""

    def __init__(self, job: Any, state: Any, checkpointer: Any, user: list[Any] | None = None) -> None:
        config, saved = job.config, state.callbacks
        check_validation(config, job.splits.val is not None)
        self.state = state
        self.monitor = Monitor(config, saved)
        self.early = EarlyStopping(self.monitor, config.early_stop_patience, saved) if config.early_stop_patience else None
        plateau = (PlateauLR(self.monitor, job.stepper.scheduler, config.reduce_lr_patience, config.reduce_lr_factor, saved)
                   if config.reduce_lr_patience else None)
        self.best = BestKeeper(self.monitor, checkpointer) if config.keep_best else None
        self.builtin = [c for c in (self.early, plateau, self.best) if c is not None]
        self.user = list(user or [])
        for callback in self.user:
            if not any(hasattr(callback, hook) for hook in USER_HOOKS):
                raise UserError(f"callback {type(callback).__name__} has none of {', '.join(USER_HOOKS)}; implement at least one")
        self.run = Run(job, state)
        self.run.epoch = state.step // job.order.steps_per_epoch
        self.total_steps, self.device = job.total_steps, job.stepper.device
        self.stopped_early = bool(saved.get("stopped_early", 0))
        self.last_val: dict[str, Any] = {k: saved.get(k) for k in ("val_loss", "val_accuracy")}

    @property
    def should_stop(self) -> bool:
        return self.run.stop_training

    def on_train_start(self) -> None:
        self._call("on_train_start", self.run)

    def on_step_end(self, epoch: int, loss: torch.Tensor) -> None:
        """After every optimizer step; the loss is read (a sync point) only for user callbacks."""
        self.run.epoch = epoch
        if self.user:
            lr = self.run.optimizer.param_groups[0]["lr"]
            self._call("on_step_end", self.run, self.run.step, {"loss": float(loss), "lr": lr})
            self._agree_to_stop()

    def on_epoch_end(self, epoch: int, record: dict[str, Any] | None, epoch_losses: list[torch.Tensor]) -> None:
        """After an epoch and its validation (``record``, or None without one)."""
        if record is not None:
            self._on_validation(record)
        if self.user:
            logs = dict(record) if record is not None else {}
            if "train_loss" not in logs and epoch_losses:
                logs["train_loss"] = float(torch.stack(epoch_losses).float().mean())
            self._call("on_epoch_end", self.run, epoch, logs)
            self._agree_to_stop()

    def _on_validation(self, record: dict[str, Any]) -> None:
        self.last_val = {k: record.get(k) for k in ("val_loss", "val_accuracy")}
        if self.builtin:
            self.monitor.update(record)
            for callback in self.builtin:
                callback.on_validation(record)
        if self.early is not None and self.early.fired and self.state.step < self.total_steps:
            self.stopped_early = self.run.stop_training = True
        self.state.callbacks = self._carried()

    def restore_best(self) -> None:
        """--keep-best: the best validated weights go back into the model before the test."""
        if self.best is not None:
            self.best.restore()

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self._call("on_train_end", self.run, summary)

    def summary_fields(self) -> dict[str, Any]:
        """summary.json's keys about validation and the callbacks (null where unused)."""
        used = bool(self.builtin)
        return {
            "stopped_early": self.stopped_early,
            "best_step": self.monitor.best_step if used else None,
            "best_value": self.monitor.best if used else None,
            "monitor": self.monitor.metric if used else None,
            **self.last_val,
        }

    def _carried(self) -> dict[str, int | float | None]:
        """Plain finite numbers (or None) only: what a checkpoint's ``carried`` entry accepts."""
        values: dict[str, Any] = {**self.monitor.state(), "stopped_early": int(self.stopped_early)}
        for callback in self.builtin:
            values.update(callback.state())
        for key, value in self.last_val.items():
            values[key] = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        return values

    def _agree_to_stop(self) -> None:
        """Under torchrun every worker runs the user's callbacks: one asking to stop stops all,
        after the same step. (Early stopping needs no agreement: its record is all-reduced.)"""
        if dist.world_size() > 1:
            flag = torch.tensor([float(self.run.stop_training)], device=self.device)
            self.run.stop_training = bool(dist.sum_over_ranks(flag)[0] > 0)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.user:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)
