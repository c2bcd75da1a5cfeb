"""One optimizer step, shared by the trainer and the benchmarks so that `bench train`
measures exactly the step that training runs: the model placed for speed (channels_last,
DDP/FSDP2, torch.compile), its optimizer and schedule, and ``train_step`` itself
(micro-batches, autocast, gradient scaling and clipping, no all-reduce until the last
micro-batch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from dlscale.distributed import process_group as dist
from dlscale.distributed import parallel
from dlscale.errors import UserError
from dlscale.data.preprocess import pixels_to_input
from dlscale.training.config import TrainConfig
from dlscale.hardware.device import autocast
from dlscale.models.flops import Loss, loss_fn


@dataclass
class Stepper:
    """What one optimizer step needs; the trainer and `bench train` share it, so the
    benchmark measures exactly the step that training runs."""

    raw_model: torch.nn.Module  # the module whose state is saved and evaluated
    model: torch.nn.Module  # what the step calls: raw_model, or its compiled form
    device: torch.device
    precision: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    grad_accum: int
    grad_clip: float
    channels_last: bool
    parallel: torch.nn.Module  # the DDP wrapper or the FSDP2 root (raw_model itself with one worker)
    loss: Loss = loss_fn  # the run's loss (models.flops.loss_for): cross-entropy, or MSE/MAE/Huber for regression
    pixels: bool = False  # inputs come as uint8 pixels (image folders), scaled to [-1, 1] on the device

    def sync_gradients(self, sync: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
        if sync or dist.world_size() == 1:
            return contextlib.nullcontext()
        if hasattr(self.parallel, "no_sync"):  # DDP
            return self.parallel.no_sync()
        if hasattr(self.parallel, "set_requires_gradient_sync"):  # FSDP2
            self.parallel.set_requires_gradient_sync(False)
            return _ResumeGradientSync(self.parallel)
        return contextlib.nullcontext()


class _ResumeGradientSync(contextlib.AbstractContextManager):
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __exit__(self, *exc: object) -> None:
        self.module.set_requires_gradient_sync(True)


def train_step(s: Stepper, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step over the batch, split into ``grad_accum`` micro-batches."""
    x, y = to_device(s, x), y.to(s.device, non_blocking=True)
    total = torch.zeros((), device=s.device)
    for i, (micro_x, micro_y) in enumerate(zip(x.chunk(s.grad_accum), y.chunk(s.grad_accum))):
        with s.sync_gradients(i == s.grad_accum - 1):
            with autocast(s.device, s.precision):
                loss = s.loss(s.model(micro_x), micro_y) / s.grad_accum
            if s.scaler is not None:
                s.scaler.scale(loss).backward()
            else:
                loss.backward()
        total += loss.detach()
    if s.grad_clip > 0:
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.raw_model.parameters(), s.grad_clip)
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    return total


def to_device(s: Stepper, x: torch.Tensor) -> torch.Tensor:
    """The batch on the model's device (asynchronously from pinned memory), pixels scaled there."""
    x = x.to(s.device, non_blocking=True)
    if s.pixels and x.dtype == torch.uint8:
        x = pixels_to_input(x)
    if s.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def build_stepper(
    config: TrainConfig, model: torch.nn.Module, device: torch.device, total_steps: int, loss: Loss = loss_fn,
    pixels: bool = False,
) -> Stepper:
    """Place the model (channels_last, compile) and build its optimizer, schedule and scaler.
    ``config`` is resolved: precision, compile, channels_last and lr are concrete values."""
    check_trainable(model)
    raw_model = model.to(device)
    if config.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    wrapped = parallel.wrap(raw_model, config.strategy, device, config.precision)  # FSDP2 shards raw_model in place
    optimizer = make_optimizer(config.replace(lr=effective_lr(config)), raw_model, device)
    return Stepper(
        raw_model=raw_model,
        model=torch.compile(wrapped) if config.compile else wrapped,
        device=device,
        precision=config.precision,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(config.schedule, config.warmup_steps, total_steps)
        ),
        scaler=torch.amp.GradScaler(device.type) if config.precision == "fp16" else None,
        grad_accum=config.grad_accum,
        grad_clip=config.grad_clip,
        channels_last=config.channels_last,
        parallel=wrapped,
        loss=loss,
        pixels=pixels,
    )


def check_trainable(model: torch.nn.Module) -> None:
    """UserError for a model with nothing to train: no parameters, or all frozen."""
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"{type(model).__name__} has no parameters to train (none, or all with requires_grad=False); "
                        "give a model with at least one trainable parameter")


def effective_lr(config: TrainConfig) -> float:
    """The peak learning rate the optimizer uses: with --scale-lr, the linear scaling rule
    (Goyal et al. 2017: lr x global batch / 256)."""
    return config.lr * config.batch_size / 256 if config.scale_lr else config.lr


def make_optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum; no weight decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # The fused kernels: one pass over all parameters instead of a dozen tensor ops per
    # parameter (on a CPU: AdamW's step 240 -> 80 us for the small CNN, 4% of its step).
    fused = device.type in ("cuda", "cpu") or None
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


def lr_factor(schedule: str, warmup: int, total: int):
    """Linear warm-up to the base learning rate, then cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
