"""A zoo model's size without its memory: the parameter count and the training FLOPs per
sample, from the model built on the "meta" device (shapes only, no weights), so that a
forecast can size a model far larger than this machine holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlscale.models import ModelInfo, build_model, model_info
from dlscale.models.flops import count


@dataclass(frozen=True)
class ModelSize:
    params: int
    train_flops_per_sample: int | None  # None when FlopCounterMode cannot count the model


def _meta_model(name: str) -> tuple[ModelInfo, torch.nn.Module]:
    info = model_info(name)
    with torch.device("meta"):
        model = build_model(name, info.default_input_shape, info.default_num_classes)
    return info, model


def parameter_count(name: str) -> int:
    """The parameters of zoo model ``name`` at its default input shape and classes."""
    _, model = _meta_model(name)
    return sum(p.numel() for p in model.parameters())


def model_size(name: str) -> ModelSize:
    """Parameters and training FLOPs per sample of zoo model ``name`` at its defaults."""
    info, model = _meta_model(name)
    params = sum(p.numel() for p in model.parameters())
    if info.kind == "tokens":
        x = torch.zeros((1, *info.default_input_shape), dtype=torch.long, device="meta")
        y = torch.zeros((1, *info.default_input_shape), dtype=torch.long, device="meta")
    else:
        x = torch.zeros((1, *info.default_input_shape), device="meta")
        y = torch.zeros((1,), dtype=torch.long, device="meta")
    flops = count(model, x, y)
    return ModelSize(params, flops.train_per_sample if flops else None)
