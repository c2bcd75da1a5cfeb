"""Refuse a batch that cannot fit, before training starts, instead of being ended without a
word by the kernel's OOM killer (or by a CUDA out-of-memory error after minutes of setup).

Two questions, one function each:

- ``available(device)`` (``dlscale.hardware.memory``): how many more bytes this process
  may use, from cgroups, ulimits and MemAvailable, or the GPU's free memory.

- ``step_bytes(model, x, y)``: the bytes one forward + backward of the batch ``(x, y)``
  allocates on top of the model. The step runs on a copy of the model on the "meta"
  device, at the real batch size: shapes flow through every operator as in training,
  but nothing is computed or allocated, so it costs the same for any batch (0.02 s for
  the small CNN, 0.2 s for resnet18, 0.7 s for vit-tiny here). A dispatch mode adds up
  the bytes of every tensor the step creates and takes them off when their storage is
  freed; the highest total is the step's peak.

  That peak counts tensors only: what kernels allocate privately (oneDNN scratch
  space), the allocator's own waste and the optimizer's state come on top. Measured
  against the growth of the resident set over one real step (VmHWM, with dlscale's
  allocator settings), real use was 1.1x to 1.8x this figure in fp32 (mlp, cnn,
  gpt-tiny, vit-tiny, resnet18) and 1.6x to 2.2x half of it in bf16. So the figure is a
  lower bound and a refusal is never wrong: a batch is refused only when even the lower
  bound does not fit. Dropped after trying them: running real steps of 2 and 4 samples
  under the same dispatch mode and extrapolating (small batches take other kernel
  paths: vit-tiny came out 8x too low); the growth of VmHWM over such small steps
  (noise: the heap reuses what earlier steps freed, 4 samples grew it as much as 8);
  torch.profiler's memory records (3 s to start, and it writes to stderr).

``check_batch_fits`` puts the two together for a run and raises a ``UserError`` that
names the batch, the figures, the limit that binds and a batch size that fits.
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter

from dlscale.errors import UserError
from dlscale.hardware.memory import Available, available
from dlscale.models.flops import loss_fn

GiB = 2**30
SUGGESTION_HEADROOM = 2.5  # the batch size suggested needs at most 1/2.5 of what is available (real use ran to 2.2x)


# --------------------------------------------------------------------------- what a step needs


class _LiveBytes(TorchDispatchMode):
    """Adds up the bytes of the tensors created under it, takes them off when their
    storage is freed, and keeps the highest total in ``peak``."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = self.peak = 0
        # storages by identity (_cdata: the address of the C++ storage); views of these are not new memory
        self.seen = {t.untyped_storage()._cdata for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_iter(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out

    def _freed(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes


def step_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int | None:
    """Peak bytes that a forward + backward of ``(x, y)`` creates (activations, gradients,
    temporaries), beyond the model and the batch themselves; None when the model cannot
    run on the meta device. ``model`` is left as it was."""
    state = [*model.parameters(), *model.buffers()]
    memo = {}  # the copy gets meta tensors in place of the weights: no real memory is copied
    for tensor in state:
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = torch.nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else meta
    try:
        meta_model = copy.deepcopy(model, memo).train()
        meta_x, meta_y = torch.empty_like(x, device="meta"), torch.empty_like(y, device="meta")
        meta_state = [*meta_model.parameters(), *meta_model.buffers()]
        with _LiveBytes(existing=[*meta_state, meta_x, meta_y]) as live:
            loss_fn(meta_model(meta_x), meta_y).backward()
    except Exception:  # a custom op without a meta kernel, data-dependent shapes: no figure beats a wrong one
        return None
    return live.peak


# --------------------------------------------------------------------------- the check


def check_batch_fits(
    model: torch.nn.Module,
    example_x: torch.Tensor,
    example_y: torch.Tensor,
    *,
    batch_size: int,
    workers: int,
    local_workers: int,
    grad_accum: int,
    device: torch.device,
    precision: str,
    compiled: bool,
    sharded: bool,
) -> None:
    """Raise a UserError when one training step of ``batch_size`` samples (the global
    batch) clearly cannot fit in the memory this process may use; say nothing otherwise.

    Each of the ``workers`` runs micro-batches of ``batch_size / (workers * grad_accum)``
    samples and holds its whole share of the batch. On a CPU the ``local_workers`` of this
    machine share its memory; on a GPU each has its own, and the weights move there too.
    In bf16/fp16 activations take half the bytes or more, so half the fp32 figure is
    counted. Compiled models (the compiler may keep fewer activations) and sharded ones
    (FSDP keeps a part of the weights and gradients) are not checked: the figure would
    stop being a lower bound.
    """
    if compiled or sharded or device.type not in ("cpu", "cuda"):
        return
    free = available(device, processes=local_workers if device.type == "cpu" else 1)
    if free is None:
        return
    micro = batch_size // (workers * grad_accum)
    sample_bytes = example_x[0].nbytes + example_y[0].nbytes
    weights = sum(t.nbytes for t in itertools.chain(model.parameters(), model.buffers()))
    resident = weights if device.type == "cuda" else 0  # on a CPU the model is already in memory
    half = 0.5 if precision in ("bf16", "fp16") else 1.0

    def need(micro_batch: int) -> float | None:
        """Bytes one worker needs with micro-batches of ``micro_batch`` samples."""
        step = step_bytes(model, _like(example_x, micro_batch), _like(example_y, micro_batch))
        if step is None:
            return None
        return step * half + sample_bytes * micro_batch * grad_accum + resident

    needed = need(micro)
    if needed is None or needed <= free.bytes:
        return
    one = need(1) if micro > 1 else needed  # a straight line through both: fixed + per_sample * micro
    per_sample = (needed - one) / (micro - 1) if micro > 1 and one is not None else needed / micro
    fixed = needed - per_sample * micro
    where = (" of GPU memory" if device.type == "cuda" else "") + (" per worker" if workers > 1 else "")
    what = f"a batch of {batch_size} samples needs at least {_size(needed)}{where} for one training step"
    limit = f"only {_size(free.bytes)} is available (limit from {free.source})"
    fits = int((free.bytes / SUGGESTION_HEADROOM - fixed) // per_sample) if per_sample > 0 else 0
    if fits < 1:
        raise UserError(
            f"{what}, and even one sample needs about {_size(fixed + per_sample)}, but {limit}; "
            "use a smaller model or give the run more memory"
        )
    suggestion = 2 ** (fits.bit_length() - 1) * workers * grad_accum  # a power of two per micro-batch
    raise UserError(f"{what} but {limit}; use --batch-size {suggestion} or fewer")


def _size(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB / 10 else f"{nbytes / 2**20:.1f} MiB"


def _like(batch: torch.Tensor, n: int) -> torch.Tensor:
    """A meta batch of ``n`` samples shaped like the samples of ``batch``."""
    return torch.empty((n, *batch.shape[1:]), dtype=batch.dtype, device="meta")
