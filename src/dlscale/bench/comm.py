"""Collective-communication benchmark: all-reduce, all-gather and broadcast over a size
sweep, timed and reported the way NVIDIA's nccl-tests does it.

Everything here runs through ``torch.distributed`` (Gloo on CPUs, NCCL on CUDA GPUs) in a
process group the caller has already joined; nothing is a hand-made collective.

Definitions (nccl-tests, ``doc/PERFORMANCE.md``, https://github.com/NVIDIA/nccl-tests):

- **time**: the mean time of one operation over ``iters`` back-to-back operations, with the
  device synchronised before each clock read; ``warmup`` operations run before, untimed.
  Each rank times itself and the job reports the *slowest* rank (nccl-tests' ``-a 3``;
  its default, ``-a 1``, averages the ranks, kept here as ``time_avg_s``).
- **algbw** (algorithm bandwidth) = S / t, with S the operation's size in bytes.
- **busbw** (bus bandwidth) = algbw x a factor that makes the figure comparable with the
  hardware's link speed whatever the number of ranks n:

  - all-reduce: 2(n-1)/n (every element crosses 2(n-1) links among n, as a ring or a tree);
  - all-gather: (n-1)/n, with S the *gathered* size (every rank's share x n);
  - broadcast: 1 (all data leaves the root through its one link).

- GB/s are 1e9 bytes per second (as nccl-tests prints them), not GiB/s.

Sizes are whole elements of the chosen dtype: a size that is not a multiple of the
element size is rounded *down* to whole elements (a size below one element is refused);
all-gather rounds the gathered size down to a multiple of n elements (each rank sends
``elements // n``, as nccl-tests does), and up to one element per rank when the size is
smaller than that. Each row's ``bytes`` is the size actually moved, and
``requested_bytes`` the size asked for.

Every operation is checked once for correct values before it is timed (nccl-tests' ``-c``):
a backend that returns wrong data is an error, not a fast result.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

from dlscale.errors import UserError

OPS = ("all_reduce", "all_gather", "broadcast")
_OP_ALIASES = {
    "all_reduce": "all_reduce", "allreduce": "all_reduce",
    "all_gather": "all_gather", "allgather": "all_gather",
    "broadcast": "broadcast", "bcast": "broadcast",
}
DTYPE_NAMES = ("fp32", "bf16", "fp16")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
MAX_SIZES = 64  # a sweep longer than this is a typo in the range


# --------------------------------------------------------------------------- definitions


def busbw_factor(op: str, world_size: int) -> float:
    """nccl-tests' correction from algorithm to bus bandwidth for ``world_size`` ranks."""
    n = world_size
    if n < 1:
        raise ValueError(f"world size must be at least 1, got {n}")
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op == "all_gather":
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise ValueError(f"unknown collective {op!r}")


def algbw_gbps(nbytes: int, seconds: float) -> float:
    """Algorithm bandwidth in GB/s (1e9 bytes/s): size / time."""
    return nbytes / seconds / 1e9


def busbw_gbps(op: str, nbytes: int, seconds: float, world_size: int) -> float:
    """Bus bandwidth in GB/s: algbw x busbw_factor(op, world_size)."""
    return algbw_gbps(nbytes, seconds) * busbw_factor(op, world_size)


# --------------------------------------------------------------------------- parsing

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864: a whole number of bytes with an optional K/M/G suffix
    (powers of 1024; ``KB``/``KiB`` are read the same)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UserError(
            f"--sizes: {text.strip()!r} is not a size; write whole bytes with an optional K, M or G "
            "(powers of 1024), e.g. 1K,1M,64M or 1K:64M:4"
        )
    value = int(match[1]) * _UNITS[match[2].upper()]
    if value < 1:
        raise UserError(f"--sizes: {text.strip()!r} is zero bytes; sizes start at 1 element")
    return value


def parse_sizes(text: str) -> list[int]:
    """``"1K,1M,64M"`` (a list) or ``"1K:64M:4"`` (from 1K to at most 64M, multiplying by
    4, as nccl-tests' ``-b 1K -e 64M -f 4``), or a list mixing both -> sizes in bytes,
    repeats dropped, in order."""
    sizes: list[int] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        sizes += _parse_range(part.strip()) if ":" in part else [parse_size(part)]
    if not sizes:
        raise UserError("--sizes is empty; give sizes like 1K,1M,64M or a range like 1K:64M:4")
    sizes = list(dict.fromkeys(sizes))
    if len(sizes) > MAX_SIZES:
        raise UserError(f"--sizes {text!r} makes more than {MAX_SIZES} sizes; use a larger factor or fewer sizes")
    return sizes


def _parse_range(text: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != 3:
        raise UserError(f"--sizes range {text!r} must be FROM:TO:FACTOR, e.g. 1K:64M:4")
    low, high = parse_size(parts[0]), parse_size(parts[1])
    try:
        factor = int(parts[2].strip())
    except ValueError:
        raise UserError(f"--sizes range {text!r}: the factor {parts[2].strip()!r} must be a whole number of 2 or more") from None
    if factor < 2:
        raise UserError(f"--sizes range {text!r}: the factor must be 2 or more, got {factor}")
    if low > high:
        raise UserError(f"--sizes range {text!r} runs backwards; write the smaller size first, e.g. 1K:64M:4")
    sizes = [low]
    while sizes[-1] * factor <= high and len(sizes) <= MAX_SIZES:
        sizes.append(sizes[-1] * factor)
    return sizes


def parse_ops(text: str) -> list[str]:
    """``"all_reduce,broadcast"`` -> the collectives, in order (``allreduce``/``all-reduce`` too)."""
    ops = []
    for part in (text or "").split(","):
        name = part.strip().lower().replace("-", "_")
        if not name:
            continue
        if name not in _OP_ALIASES:
            raise UserError(f"--ops: {part.strip()!r} is not a collective this benchmark runs; choose from {', '.join(OPS)}")
        ops.append(_OP_ALIASES[name])
    if not ops:
        raise UserError(f"--ops is empty; choose from {', '.join(OPS)}")
    return list(dict.fromkeys(ops))


def human_bytes(nbytes: int) -> str:
    """1024 -> '1 KiB', 1536 -> '1.5 KiB', 100 -> '100 B'; a size no unit states exactly
    in one decimal (one rounded to whole elements) in bytes: 1048572 -> '1,048,572 B'."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= factor and (10 * nbytes) % factor == 0:
            value = nbytes / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes:,} B"


def human_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def shape_for(op: str, nbytes: int, dtype: str, world_size: int) -> tuple[int, int]:
    """(elements each rank sends, bytes the operation moves) for a requested size, rounded
    to whole elements as the module docstring says."""
    element = ELEMENT_BYTES[dtype]
    elements = nbytes // element
    if elements < 1:
        raise UserError(f"--sizes: {nbytes} B is less than one {dtype} element ({element} B); sizes start at one element")
    if op == "all_gather":
        per_rank = max(1, elements // world_size)
        return per_rank, per_rank * world_size * element
    return elements, elements * element


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class CommSettings:
    sizes: tuple[int, ...]
    ops: tuple[str, ...] = OPS
    dtype: str = "fp32"
    iters: int = 20
    warmup: int = 5


def measure(settings: CommSettings, device: Any, say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time every op x size in the process group this process has joined; every rank gets
    the same rows (the slowest rank's time). ``say`` receives a progress line per op."""
    import torch
    import torch.distributed as tdist

    from dlscale.distributed import process_group as dist
    from dlscale.hardware.device import DTYPES, synchronize

    world, rank = tdist.get_world_size(), tdist.get_rank()
    backend = str(tdist.get_backend())
    dtype = DTYPES[settings.dtype]
    where = "cpu" if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})"
    gather_into = getattr(tdist, "all_gather_single", None) or getattr(tdist, "all_gather_into_tensor", None)
    rows = []
    for op in settings.ops:
        if say:
            say(f"{op}: {len(settings.sizes)} size(s), {settings.warmup} warm-up + {settings.iters} timed each")
        for requested in settings.sizes:
            count, nbytes = shape_for(op, requested, settings.dtype, world)
            try:
                buffers = _allocate(op, count, world, dtype, device)
            except torch.OutOfMemoryError:
                raise UserError(f"{op} of {human_bytes(nbytes)} does not fit in {device} memory; pick smaller --sizes") from None
            call, gather_into = _operation(op, buffers, world, gather_into)
            _check(op, buffers, call, rank, world, nbytes, backend, device)
            for _ in range(settings.warmup):
                call()
            synchronize(device)
            tdist.barrier()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(settings.iters):
                call()
            synchronize(device)
            elapsed = (time.perf_counter() - start) / settings.iters
            times = dist.gather(elapsed)  # every rank's mean time, on every rank
            del buffers, call
            seconds = max(times)
            rows.append({
                "op": op,
                "bytes": nbytes,
                "world_size": world,
                "time_s": seconds,
                "algbw_gbps": algbw_gbps(nbytes, seconds),
                "busbw_gbps": busbw_gbps(op, nbytes, seconds, world),
                "time_avg_s": statistics.fmean(times),
                "time_spread_s": seconds - min(times),
                "requested_bytes": requested,
                "elements": count if op != "all_gather" else count * world,
                "dtype": settings.dtype,
                "iters": settings.iters,
                "warmup": settings.warmup,
                "backend": backend,
                "device": where,
            })
    return rows


def _allocate(op: str, count: int, world: int, dtype: Any, device: Any) -> dict[str, Any]:
    import torch

    if op == "all_gather":
        return {"input": torch.zeros(count, dtype=dtype, device=device),
                "output": torch.zeros(count * world, dtype=dtype, device=device)}
    return {"tensor": torch.zeros(count, dtype=dtype, device=device)}


def _operation(op: str, buffers: dict[str, Any], world: int, gather_into: Any) -> tuple[Callable[[], None], Any]:
    """The call to time, and the single-tensor all-gather to use from now on (None once a
    backend has refused it: then the list form, ``all_gather``, is used)."""
    import torch.distributed as tdist

    if op == "all_reduce":
        tensor = buffers["tensor"]
        return (lambda: tdist.all_reduce(tensor)), gather_into
    if op == "broadcast":
        tensor = buffers["tensor"]
        return (lambda: tdist.broadcast(tensor, src=0)), gather_into
    source, output = buffers["input"], buffers["output"]
    if gather_into is not None:
        try:
            gather_into(output, source)  # every rank runs the same backend: all succeed or all refuse
            return (lambda: gather_into(output, source)), gather_into
        except (RuntimeError, NotImplementedError):
            pass
    chunks = list(output.chunk(world))  # views into ``output``: the list form fills the same memory
    return (lambda: tdist.all_gather(chunks, source)), None


def _check(op: str, buffers: dict[str, Any], call: Callable[[], None], rank: int, world: int,
           nbytes: int, backend: str, device: Any) -> None:
    """Run the operation once on known values and compare (values exact in bf16 and fp16),
    then zero the buffers so the timed runs cannot overflow."""
    import torch

    if op == "all_gather":
        source, output = buffers["input"], buffers["output"]
        source.fill_(rank % 64 + 1)
        output.zero_()
        call()
        expected = (torch.arange(world, device=device) % 64 + 1).to(output.dtype)
        good = bool(torch.equal(output.view(world, -1), expected.unsqueeze(1).expand(world, source.numel())))
        source.zero_()
    else:
        tensor = buffers["tensor"]
        tensor.fill_(1 if rank == 0 else 0)  # all-reduce: 1 + 0 + ... = 1; broadcast: rank 0's 1
        call()
        good = bool((tensor == 1).all())
        tensor.zero_()
    if not good:
        raise UserError(
            f"rank {rank}: {op} of {human_bytes(nbytes)} over {world} ranks returned wrong values "
            f"through {backend} on {device}; the communication library or the link is broken"
        )
