"""FLOPs per sample, counted by PyTorch's FlopCounterMode over one real step.

The count runs on a copy of the model on the "meta" device: shapes flow through every
operator exactly as in training, but no arithmetic is done and the real model's
weights, buffers and RNG are untouched. One multiply-add counts as 2 FLOPs.
Hand-written formulas (6N per token, 3x forward for training) serve only as test
oracles, never here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class FlopCount:
    forward_per_sample: int  # inference
    train_per_sample: int  # forward + backward of one training step


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classifiers (B, C) and language models (B, T, V) alike."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def count(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> FlopCount | None:
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
            loss_fn(meta_model(x), y).backward()
    except Exception:  # a custom op without a meta kernel: no count beats a wrong one
        return None
    return FlopCount(
        forward_per_sample=forward_counter.get_total_flops() // batch,
        train_per_sample=train_counter.get_total_flops() // batch,
    )
