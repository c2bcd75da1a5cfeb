"""Collective-communication benchmark: all-reduce, all-gather and broadcast over a size
sweep, timed and reported the way NVIDIA's nccl-tests does it.

Everything here runs through ``torch.distributed`` (Gloo on CPUs, NCCL on CUDA GPUs);
nothing is a hand-made collective. ``measure`` times in a process group the caller has
joined, ``measure_as_rank`` joins one (of one process, when alone) and ``launch_workers``
starts the workers that do, through torchrun's elastic agent.

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

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dlscale.errors import UserError

if TYPE_CHECKING:
    from dlscale.distributed.elastic import LaunchPlan
    from dlscale.distributed.env import ClusterEnv
    from dlscale.progress import SweepProgress

OPS = ("all_reduce", "all_gather", "broadcast")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ROWS_FILE = "comm-rows.json"  # rank 0's rows, left for the launcher that started the workers


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


def human_bytes(nbytes: int) -> str:
    """1024 -> '1 KiB', 1536 -> '1.5 KiB', 100 -> '100 B'; a size no unit states exactly
    in one decimal (one rounded to whole elements) in bytes: 1048572 -> '1,048,572 B'."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= factor and (10 * nbytes) % factor == 0:
            value = nbytes / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes:,} B"


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


def measure(settings: CommSettings, device: Any, say: Callable[[str], None] | None = None,
            progress: SweepProgress | None = None) -> list[dict[str, Any]]:
    """Time every op x size in the process group this process has joined; every rank gets
    the same rows (the slowest rank's time). ``say`` receives a line per op, ``progress``
    each op x size as it starts and finishes."""
    from dlscale.progress import SweepProgress

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
    progress = progress or SweepProgress(None)
    progress.set_total(len(settings.ops) * len(settings.sizes))
    for op in settings.ops:
        if say:
            say(f"{op}: {len(settings.sizes)} size(s), {settings.warmup} warm-up + {settings.iters} timed each")
        for requested in settings.sizes:
            count, nbytes = shape_for(op, requested, settings.dtype, world)
            progress.start(f"{op} {human_bytes(nbytes)}")
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
            progress.finish(f"{rows[-1]['busbw_gbps']:.3f} GB/s busbw")
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


# --------------------------------------------------------------------------- running


def _check_memory(settings: CommSettings, device: str, nproc: int) -> None:
    """On the CPU every worker holds its buffers in this node's memory: refuse a sweep that
    cannot fit rather than let the kernel kill a worker halfway."""
    import torch

    from dlscale.hardware.inventory import memory_bytes

    on_cpu = device.strip().lower() == "cpu" or not torch.cuda.is_available()
    total = memory_bytes()
    need = 3 * max(settings.sizes) * nproc  # buffers, plus the backend's staging copies
    if on_cpu and total and need > 0.8 * total:
        raise UserError(
            f"--sizes up to {human_bytes(max(settings.sizes))} in {nproc} workers needs about "
            f"{human_bytes(need)} of memory and this machine has {human_bytes(total)}; pick smaller --sizes"
        )


def launch_workers(settings: CommSettings, plan: LaunchPlan, device: str, worker_flags: list[str], run_dir: str | None,
                   say: Callable[[str], None]) -> tuple[dict[str, Any], Path] | None:
    """Start the plan's workers through torchrun's elastic agent, each running ``dlscale bench
    comm --worker-of RUN_DIR WORKER_FLAGS``; the result object and the file it was written
    to, or None where rank 0 ran on another node (whose launcher writes the result)."""
    from dlscale.bench.common import bench_run_dir, result_object, write_result
    from dlscale.bench.reliability import Interference
    from dlscale.distributed.elastic import check_devices, launch
    from dlscale.runs import directory as runs

    check_devices(device, plan.nproc)
    _check_memory(settings, device, plan.nproc)
    world = plan.nproc * plan.nnodes
    path = bench_run_dir("comm", f"{world}ranks", run_dir)
    runs.create_run_dir(path)  # the workers' logs go here from the start
    say(f"dlscale: starting {world} workers ({plan.nproc} per node) through torchrun's elastic agent → {path}")
    interference = Interference.snapshot()
    launch(["bench", "comm", "--worker-of", str(path), *worker_flags], plan, log_dir=path / "logs")
    rows_path = path / ROWS_FILE
    if not rows_path.exists():
        if plan.nnodes > 1:  # rank 0 ran on another node: its launcher reports
            return None
        raise UserError(f"the workers finished but wrote no {rows_path}; see their logs under {path / 'logs'}")
    written = json.loads(rows_path.read_text())
    result = result_object(written["rows"], kind="comm", interference=interference, **_result_meta(settings, written))
    result_path = write_result(path, "comm", result)
    rows_path.unlink(missing_ok=True)  # the rows now live in bench-comm.json
    return result, result_path


def measure_as_rank(settings: CommSettings, env: ClusterEnv, device: str, timeout_s: float, worker_of: str | None,
                    run_dir: str | None, say: Callable[[str], None], progress: SweepProgress | None = None,
                    ) -> tuple[dict[str, Any], Path] | None:
    """Measure as one rank of the job ``env`` describes (a group of one when it is one
    process): rank 0 leaves the rows in ``worker_of`` for its launcher, or writes the result
    itself; the result object and its file where this rank wrote one, else None."""
    import torch.distributed as tdist

    from dlscale.bench.common import bench_run_dir, result_object, write_result
    from dlscale.bench.reliability import Interference
    from dlscale.distributed import process_group as dist
    from dlscale.hardware.device import resolve_device
    from dlscale.runs.files import write_json

    if not worker_of and env.world_size == 1:  # one rank in this process
        _check_memory(settings, device, 1)
    torch_device = resolve_device(device, env.local_rank)
    if torch_device.type not in ("cpu", "cuda"):
        raise UserError(f"torch.distributed has no backend for {torch_device.type}; use --device cpu")
    if env.world_size > 1:
        dist.init(env, torch_device, timeout_s)
    own_group = not tdist.is_initialized()
    if own_group:
        dist.init_alone(torch_device, timeout_s)
    try:
        main = tdist.get_rank() == 0
        world = tdist.get_world_size()
        if not worker_of:  # started by torchrun/srun/mpirun or --nproc 1: rank 0 reports
            run_dir = dist.on_main(lambda: bench_run_dir("comm", f"{world}ranks", run_dir))
        if main:
            say(f"dlscale bench comm: {world} rank(s), {tdist.get_backend()} on {torch_device.type}, {settings.dtype}")
        interference = Interference.snapshot()
        try:
            rows = measure(settings, torch_device, say=say if main else None, progress=progress if main else None)
        except (RuntimeError, dist.DistError) as exc:
            failure = dist.collective_failure(exc, timeout_s)
            if failure is not None:
                raise failure from None
            raise
        if not main:
            return None
        nodes = max(1, env.world_size // env.local_world_size) if env.world_size > 1 else 1
        meta = {"world_size": rows[0]["world_size"], "nodes": nodes, "backend": rows[0]["backend"], "device": rows[0]["device"]}
        if worker_of:
            write_json(Path(worker_of) / ROWS_FILE, {**meta, "rows": rows})
            return None
        result = result_object(rows, kind="comm", interference=interference, **_result_meta(settings, meta))
        return result, write_result(Path(run_dir), "comm", result)
    finally:
        if own_group:
            tdist.destroy_process_group()
        else:
            dist.shutdown()


def _result_meta(settings: CommSettings, written: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys of the result object besides the rows."""
    return {
        "world_size": written["world_size"], "nodes": written["nodes"], "backend": written["backend"],
        "device": written["device"],
        "dtype": settings.dtype, "ops": list(settings.ops), "sizes": list(settings.sizes),
        "iters": settings.iters, "warmup": settings.warmup,
        "time": "slowest rank's mean over iters", "gbps": "1e9 bytes/s",
    }
