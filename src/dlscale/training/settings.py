"""Turn "auto" into concrete settings, in one place, for every command that runs a model.

``train``, ``bench train``, ``bench scaling`` and the forecast's own measurement all call
``resolve``, so a benchmark times the step that training would run on this machine
(Lightning Fabric's connector resolves its flags the same way, once). The rules:

- compile: on for CUDA, off elsewhere (compiling costs minutes a CPU run rarely earns back);
- precision and channels_last on a GPU: bf16 where it has it, channels_last for conv nets;
- on a CPU, where no rule is right, whichever measures fastest (``autotune``), once per
  machine and cached;
- a value the user gave is kept, and checked against the device;
- the settings that cannot run together are one table (``COMBINATIONS``): a forced pair is
  refused before any worker starts (``refuse_incompatible``), and "auto" never picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from dlscale.data import DataSpec
from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.models import ModelInfo
from dlscale.training import autotune

@dataclass(frozen=True)
class Combination:
    """What decides whether settings can run together: known before any worker starts."""

    strategy: str  # ddp | fsdp
    world: int  # workers in all
    device_type: str  # cpu | cuda | mps
    precision: str  # auto | fp32 | bf16 | fp16
    channels_last: bool | None  # None: auto


@dataclass(frozen=True)
class Rule:
    """Settings that cannot run together: when ``applies``, a forced combination is refused
    with ``reason`` (formatted with the combination's fields)."""

    applies: Callable[[Combination], bool]
    reason: str


COMBINATIONS = (
    Rule(lambda c: c.strategy == "fsdp" and c.world > 1 and c.channels_last is True,
         "--channels-last with --strategy fsdp on {world} workers: FSDP2 shards only contiguous parameters, and "
         "channels_last reorders every conv weight in memory; leave --channels-last out (under FSDP auto keeps "
         "NCHW) or train with --strategy ddp"),
    Rule(lambda c: c.precision == "fp16" and c.device_type != "cuda",
         "--precision fp16 needs a GPU ({device_type} emulates it slowly and has no loss scaling); use bf16 or fp32"),
    Rule(lambda c: c.device_type == "mps" and c.world > 1,
         "--device mps with {world} workers: torch.distributed has no MPS backend; use --device cpu"),
)


def refuse_incompatible(combination: Combination) -> None:
    """Raise UserError with the first rule of ``COMBINATIONS`` the forced settings break."""
    for rule in COMBINATIONS:
        if rule.applies(combination):
            raise UserError(rule.reason.format(**vars(combination)))


def auto_channels_last(strategy: str, world: int, requested: bool | None) -> bool | None:
    """What "auto" may still choose for the memory format: NCHW under sharding (FSDP2 needs
    contiguous parameters), else left open (None) for the device's rule or the CPU probe."""
    if requested is None and strategy == "fsdp" and world > 1:
        return False
    return requested


@dataclass(frozen=True)
class Settings:
    """What a step runs with, after "auto" was decided."""

    precision: str  # fp32 | bf16 | fp16
    compile: bool
    channels_last: bool
    tuned: dict[str, Any] | None = None  # what the CPU probe measured; None when nothing was


def check_precision(requested: str, device: torch.device) -> str:
    """The precision ``device`` trains in: "auto" by rule (bf16 on a GPU that has it, else
    fp32), a named one checked (fp16 needs a GPU, bf16 a GPU that supports it)."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise UserError(f"--precision bf16 needs a GPU with bfloat16 support and {name} has none; use fp16")
    if requested == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a GPU (CPUs emulate it slowly); on CPU use bf16 or fp32")
    return requested


def data_spec(info: ModelInfo | None) -> DataSpec:
    """The data a model asks for when the user names none: a zoo model's own input shape
    and classes; for a model of the user's own, the 8x8 digits' shape."""
    if info is None:
        return DataSpec(kind="image", input_shape=(1, 8, 8), num_classes=10)
    return DataSpec(kind=info.kind, input_shape=info.default_input_shape, num_classes=info.default_num_classes)


def is_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def probe_key(model_name: str, input_shape: tuple[int, ...], num_classes: int) -> str:
    """What a CPU choice is cached under: the model and the shape of its data."""
    return f"{model_name}|{'x'.join(map(str, input_shape))}|{num_classes}"


def resolve(
    device: torch.device,
    model: torch.nn.Module,
    probe: tuple[torch.Tensor, torch.Tensor],
    *,
    key: str,
    precision: str = "auto",
    compile: bool | None = None,
    channels_last: bool | None = None,
    conv: bool | None = None,
    strategy: str = "ddp",
    world: int = 1,
) -> Settings:
    """Concrete settings for training ``model`` on ``device``.

    ``probe`` is a real batch of the job (a few dozen samples), timed on a CPU when the
    precision or the memory format is left open; rank 0 measures (or reads the cache
    under ``key``) and tells the other ranks, so every worker runs the same step.
    """
    refuse_incompatible(Combination(strategy, world, device.type, precision, channels_last))
    channels_last = auto_channels_last(strategy, world, channels_last)
    if precision != "auto":
        check_precision(precision, device)
    compiled = device.type == "cuda" if compile is None else compile
    conv = is_conv(model) if conv is None else conv
    if device.type != "cpu" or (precision != "auto" and (channels_last is not None or not conv)):
        layout = (device.type == "cuda" and conv) if channels_last is None else channels_last
        return Settings(check_precision(precision, device), compiled, layout)
    probe_x, probe_y = probe
    choice = dist.on_main(lambda: autotune.choose_cpu_settings(
        model, probe_x, probe_y, key=key, precision=precision, channels_last=channels_last, conv=conv,
    ))
    tuned = {
        "precision": choice.precision, "channels_last": choice.channels_last,
        "step_ms": choice.step_ms, "cached": choice.cached,
    }
    return Settings(choice.precision, compiled, choice.channels_last, tuned=tuned)
