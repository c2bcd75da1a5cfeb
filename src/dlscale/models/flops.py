"""FLOPs per sample, counted by PyTorch's FlopCounterMode over one real step.

The count runs on a copy of the model on the "meta" device: shapes flow through every
operator exactly as in training, but no arithmetic is done and the real model's
weights, buffers and RNG are untouched. One multiply-add counts as 2 FLOPs.
Hand-written formulas (6N per token, 3x forward for training) serve only as test
oracles, never here.

The training losses live here too, so that the count runs the step's own loss: the
trainer, the evaluator and the count all take it from ``loss_for``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dlscale.errors import UserError


@dataclass(frozen=True)
class FlopCount:
    forward_per_sample: int  # inference
    train_per_sample: int  # forward + backward of one training step


Loss = Callable[..., torch.Tensor]  # (output, targets, reduction="mean") -> loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for classifiers (B, C) and language models (B, T, V) alike."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction=reduction)


def _regression(elementwise: Callable[..., torch.Tensor]) -> Loss:
    """A regression loss over (B, k) outputs and (B,) or (B, k) targets, matched value for value:
    a (B, 1) output against (B,) targets must never broadcast to (B, B)."""

    def loss(output: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        output = output.reshape(len(output), -1).float()
        targets = targets.reshape(len(targets), -1).float()
        if output.shape != targets.shape:
            raise UserError(
                f"the model outputs {output.shape[1]} values per sample but the targets have {targets.shape[1]}; "
                "give the model one output per target column"
            )
        return elementwise(output, targets, reduction=reduction)

    return loss


LOSSES: dict[str, tuple[str, Loss]] = {  # name -> (the targets it fits, the loss)
    "cross_entropy": ("classes", cross_entropy),
    "mse": ("values", _regression(F.mse_loss)),
    "mae": ("values", _regression(F.l1_loss)),
    "huber": ("values", _regression(F.huber_loss)),
}
DEFAULT_LOSS = {"classes": "cross_entropy", "values": "mse"}


def loss_name(targets: str, name: str = "auto") -> str:
    """The loss a run of ``targets`` ("classes" or "values") uses: ``name``, or the default for
    ``auto``; UserError when it does not fit the targets."""
    if name == "auto":
        return DEFAULT_LOSS[targets]
    if name not in LOSSES:
        raise UserError(f"loss must be auto or one of {', '.join(LOSSES)}; got {name!r}")
    fits = LOSSES[name][0]
    if fits != targets:
        what = "integer class labels" if targets == "classes" else "float regression targets"
        choices = ", ".join(n for n, (t, _) in LOSSES.items() if t == targets)
        raise UserError(f"loss {name} is for {fits} but the data holds {what}; use {choices} (or auto)")
    return name


def loss_for(targets: str, name: str = "auto") -> Loss:
    """The loss function of ``loss_name(targets, name)``."""
    return LOSSES[loss_name(targets, name)][1]


def loss_fn(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss for these targets: cross-entropy for integer labels, MSE for float
    values. What needs only the shape of a step (memory, the CPU probe) uses it."""
    name = DEFAULT_LOSS["values" if targets.is_floating_point() else "classes"]
    return LOSSES[name][1](output, targets)


def count(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss = loss_fn) -> FlopCount | None:
    """Count FLOPs of a forward and of a forward+backward on ``inputs``; None if it cannot."""
    batch = inputs.shape[0]
    try:
        meta_model = copy.deepcopy(model).to("meta")
        meta_model.train()
        x = torch.empty_like(inputs, device="meta")
        y = torch.empty_like(targets, device="meta")
        with FlopCounterMode(display=False) as forward_counter:
            with torch.no_grad():
                meta_model(x)
        with FlopCounterMode(display=False) as train_counter:
            loss(meta_model(x), y).backward()
    except Exception:  # a custom op without a meta kernel: no count beats a wrong one
        return None
    return FlopCount(
        forward_per_sample=forward_counter.get_total_flops() // batch,
        train_per_sample=train_counter.get_total_flops() // batch,
    )
