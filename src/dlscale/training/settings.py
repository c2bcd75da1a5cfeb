"""Turn "auto" into concrete settings, in one place, for every command that runs a model.

``train``, ``bench train``, ``bench scaling`` and the forecast's own measurement all call
``resolve``, so a benchmark times the step that training would run on this machine
(Lightning Fabric's connector resolves its flags the same way, once). The rules:

- compile: on for CUDA, off elsewhere (compiling costs minutes a CPU run rarely earns back);
- precision and channels_last on a GPU: bf16 where it has it, channels_last for conv nets;
- on a CPU, where no rule is right, whichever measures fastest (``autotune``), once per
  machine and cached;
- a value the user gave is kept, and checked against the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dlscale.data import DataSpec
from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.models import ModelInfo
from dlscale.training import autotune

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
) -> Settings:
    """Concrete settings for training ``model`` on ``device``.

    ``probe`` is a real batch of the job (a few dozen samples), timed on a CPU when the
    precision or the memory format is left open; rank 0 measures (or reads the cache
    under ``key``) and tells the other ranks, so every worker runs the same step.
    """
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
