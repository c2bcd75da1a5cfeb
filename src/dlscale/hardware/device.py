"""Which device to run on, at which precision, and the few calls that differ per device.

"auto" picks the best device present (CUDA, then Apple's MPS, then the CPU) and a
safe precision for it (bf16 on GPUs that have it, fp32 elsewhere; a training run on a
CPU measures bf16 against fp32 instead, see ``autotune``). Asking for
something the machine lacks is a user error, said before anything runs.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from dlscale.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """Turn "auto"/"cpu"/"cuda"/"cuda:N"/"mps" into a device this machine has.

    With several workers on one node, worker ``local_rank`` takes GPU ``local_rank``
    (never the global rank, which runs past the GPUs of one node).
    """
    requested = requested.strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {requested} was asked for but this machine has no usable CUDA GPU; "
                "use --device cpu or --device auto"
            )
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"--device {requested!r} is not a device name; try cuda or cuda:0") from None
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise UserError(
                f"--device {requested} names GPU {index} but this machine has "
                f"{torch.cuda.device_count()}; use an index below that"
            )
        return torch.device("cuda", index)
    if requested == "mps":
        if not _mps_available():
            raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
        return torch.device("mps")
    raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {requested!r}")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Mixed precision for the forward pass: weights stay fp32, matmuls run in bf16/fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a clock read afterwards measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory since the last reset: allocated GPU memory on CUDA, the process's peak
    resident set (VmHWM, Linux) on the CPU, where tensors live in ordinary process memory."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        try:  # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return device.type
