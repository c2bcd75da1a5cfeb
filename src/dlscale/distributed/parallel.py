"""Data parallelism: ``wrap(model, strategy)`` returns what the training step calls.

- ddp: every worker holds the whole model; DistributedDataParallel averages the
  gradients with bucketed all-reduces that overlap the backward pass.
- fsdp: FSDP2's ``fully_shard`` shards parameters, gradients and optimizer state over
  the workers (each transformer block / residual stage its own unit, then the root);
  under bf16 the parameters are gathered in bf16 and gradients reduced in fp32.

With one worker the model is returned as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from dlscale.distributed import process_group as dist
from dlscale.hardware.device import DTYPES


def _shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules worth a shard unit of their own: the blocks of a ModuleList/Sequential stack."""
    units = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 1:
            children = list(module.children())
            if all(sum(p.numel() for p in c.parameters()) > 0 for c in children):
                units.extend(children)
                break  # the outermost stack is enough
    return units


def wrap(model: nn.Module, strategy: str, device: torch.device, precision: str) -> nn.Module:
    if dist.world_size() == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        for param in model.parameters():  # FSDP2 shards contiguous tensors only (a transposed view, say)
            if not param.is_contiguous():
                param.data = param.data.contiguous()

        policy = MixedPrecisionPolicy()
        if precision in ("bf16", "fp16"):
            policy = MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)
        for unit in _shard_units(model):
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
