"""Models from torchvision or timm, when the user has them installed.

`torchvision:NAME` and `timm:NAME` give access to hundreds of architectures
without dlscale depending on either library. Always randomly initialised:
dlscale never downloads weights.
"""

import importlib

from torch import nn

from dlscale.errors import UserError


def _import(library: str):
    """Import torchvision or timm, or say how to get it."""
    try:
        return importlib.import_module(library)
    except (ImportError, OSError, RuntimeError) as exc:
        # A torchvision built for another torch fails with RuntimeError/OSError, not ImportError.
        hint = " (the build that matches your torch)" if library == "torchvision" else ""
        raise UserError(
            f"{library}:NAME models need {library}, which does not import here ({exc}); "
            f"run `pip install {library}`{hint} or use a built-in model"
        ) from None


def build_torchvision(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    torchvision = _import("torchvision")
    if arch not in torchvision.models.list_models():
        raise UserError(
            f"torchvision has no model named {arch!r}; "
            "see torchvision.models.list_models() for the names it knows"
        )
    if input_shape[0] != 3:
        raise UserError(
            f"torchvision models take 3-channel images but the data has {input_shape[0]} channels; "
            f"use timm:{arch} (which adapts its first layer) or a built-in model such as cnn or resnet18"
        )
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def build_timm(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    timm = _import("timm")
    if not timm.is_model(arch):
        raise UserError(f"timm has no model named {arch!r}; see timm.list_models() for the names it knows")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
