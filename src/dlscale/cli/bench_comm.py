"""``dlscale bench comm``: all-reduce, all-gather and broadcast bandwidth over a size
sweep, as nccl-tests reports it (time, algbw, busbw; see dlscale.bench.comm).

Three ways to run:

- **launcher** (``--nproc N`` above 1 or ``--nnodes`` above 1, started by a user): start N
  workers through torchrun's elastic agent (``dlscale.bench.comm.launch_workers``, like
  ``dlscale train``), each running ``dlscale bench comm --worker-of RUN_DIR <the same flags>``;
  rank 0 writes the rows to RUN_DIR/comm-rows.json, and the launcher prints the table and
  writes bench-comm.json.
- **worker** (``--worker-of``, or started by torchrun/srun/mpirun with a world size above
  1): join the process group and measure; with no ``--worker-of``, rank 0 reports itself.
- **one process** (``--nproc 1``): a process group of one rank, in this process.
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.progress import say


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "comm",
        help="collective bandwidth: all-reduce, all-gather, broadcast (time, algbw, busbw as nccl-tests)",
        description=(
            "Time torch.distributed collectives (Gloo on CPU, NCCL on CUDA) over a sweep of sizes, in N "
            "worker processes started through torchrun's elastic agent. Each size runs --warmup untimed, "
            "then --iters timed operations; the slowest rank's mean time is reported with algbw = bytes / "
            "time and busbw = algbw x 2(n-1)/n (all-reduce), (n-1)/n (all-gather, bytes = the gathered "
            "size) or 1 (broadcast), as nccl-tests defines them. GB/s are 1e9 bytes/s."
        ),
        epilog=(
            "sizes: bytes with an optional K, M or G (powers of 1024), rounded down to whole elements of\n"
            "--dtype; a list (1K,1M,64M), FROM:TO:FACTOR (1K:64M:4 = 1K, 4K, 16K, ... 64M) or both.\n\n"
            "examples:\n"
            "  dlscale bench comm --nproc 2 --sizes 1K,1M,64M\n"
            "  dlscale bench comm --nproc 4 --sizes 1K:256M:4 --ops all_reduce --json\n"
            "  srun -N 2 --ntasks-per-node 4 dlscale bench comm --sizes 1M:1G:4   (one rank per task)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--nproc", type=int, default=2, help="worker processes on this node (default 2; on GPUs at most one per GPU)")
    add("--sizes", default="1K:64M:4", help="sizes in bytes: a list 1K,1M,64M, a range FROM:TO:FACTOR, or both (default 1K:64M:4)")
    add("--ops", default=",".join(_ops()), help="comma-separated, of all_reduce, all_gather, broadcast (default all three)")
    add("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="element type (default fp32)")
    add("--iters", type=int, default=20, help="timed operations per size (default 20)")
    add("--warmup", type=int, default=5, help="untimed operations before them (default 5)")
    add("--device", default="auto", help="auto, cpu or cuda (default auto: CUDA when present, one GPU per worker)")
    add("--timeout", type=float, default=120, help="seconds a collective may wait for the other workers (default 120)")
    add("--nnodes", type=int, default=1, help="nodes, each running this command (default 1)")
    add("--node-rank", type=int, default=0, help="this node's rank (0..nnodes-1) with --master-addr")
    add("--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous of a multi-node job (the same on every node)")
    add("--master-addr", help="head node address for a static multi-node rendezvous")
    add("--master-port", type=int, default=29500, help="head node port (default 29500)")
    add("--run-dir", metavar="DIR", help="where to write bench-comm.json and the workers' logs (default runs/<UTC-time>-bench-comm-<N>ranks)")
    add("--json", action="store_true", help="print the result object as the last line of stdout")
    add("--worker-of", metavar="RUN_DIR", help=argparse.SUPPRESS)  # set by the launcher for its workers
    p.set_defaults(handler=run)


def _ops() -> tuple[str, ...]:
    from dlscale.bench.comm import OPS

    return OPS


def run(args: argparse.Namespace) -> int:
    from dlscale.bench import comm
    from dlscale.distributed.elastic import LaunchPlan
    from dlscale.distributed.env import detect
    from dlscale.progress import SweepProgress, make_console

    for name in ("nproc", "iters", "nnodes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    settings = comm.CommSettings(
        sizes=tuple(parse_sizes(args.sizes)), ops=tuple(parse_ops(args.ops)),
        dtype=args.dtype, iters=args.iters, warmup=args.warmup,
    )
    for size in settings.sizes:
        comm.shape_for("all_reduce", size, settings.dtype, 1)  # a size below one element is refused here
    console = make_console()
    say_line = functools.partial(say, console)
    env = detect()
    if args.worker_of or env.world_size > 1 or args.nproc * args.nnodes == 1:  # a worker, or one rank here
        # a launched worker's lines reach the launcher's console through torchrun's copy of rank 0's output
        with SweepProgress(console) as progress:
            done = comm.measure_as_rank(settings, env, args.device, args.timeout, args.worker_of, args.run_dir,
                                        progress.say, progress)
    else:
        plan = LaunchPlan(
            nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint,
            master_addr=args.master_addr, master_port=args.master_port,
        )
        done = comm.launch_workers(settings, plan, args.device, _worker_flags(args), args.run_dir, say_line)
        if done is None:
            say_line("done; rank 0 ran on another node, whose launcher prints and writes the result")
    if done is not None:
        _report(console, *done, args.json)
    return 0


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The measuring flags, passed on unchanged to every worker."""
    return [
        "--sizes", args.sizes, "--ops", args.ops, "--dtype", args.dtype, "--iters", str(args.iters),
        "--warmup", str(args.warmup), "--device", args.device, "--timeout", f"{args.timeout:g}",
    ]


# --------------------------------------------------------------------------- parsing

_OP_ALIASES = {
    "all_reduce": "all_reduce", "allreduce": "all_reduce",
    "all_gather": "all_gather", "allgather": "all_gather",
    "broadcast": "broadcast", "bcast": "broadcast",
}
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
MAX_SIZES = 64  # a sweep longer than this is a typo in the range

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
            raise UserError(f"--ops: {part.strip()!r} is not a collective this benchmark runs; choose from {', '.join(_ops())}")
        ops.append(_OP_ALIASES[name])
    if not ops:
        raise UserError(f"--ops is empty; choose from {', '.join(_ops())}")
    return list(dict.fromkeys(ops))


# --------------------------------------------------------------------------- output


def _report(console: Any, result: dict[str, Any], path: Path, as_json: bool) -> None:
    from dlscale.bench.reliability import warning
    from dlscale.runs.files import to_json

    console.print(results_table(result))
    say(console, _note(result))
    if warning(result):
        say(console, warning(result))
    say(console, f"result: {path}")
    if as_json:
        print(to_json(result), flush=True)


def results_table(result: dict[str, Any]):
    from rich import box
    from rich.table import Table

    from dlscale.bench.comm import human_bytes

    title = f"bench comm: {result['world_size']} ranks, {result['backend']} on {result['device']}, {result['dtype']}"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    table.add_column("op", justify="left")
    for name in ("size", "time", "algbw GB/s", "busbw GB/s"):
        table.add_column(name, justify="right")
    previous = None
    for row in result["results"]:
        table.add_row(
            row["op"] if row["op"] != previous else "", human_bytes(row["bytes"]), _human_seconds(row["time_s"]),
            f"{row['algbw_gbps']:.3f}", f"{row['busbw_gbps']:.3f}",
            end_section=False,
        )
        previous = row["op"]
    return table


def _note(result: dict[str, Any]) -> str:
    text = (
        "time: the slowest rank's mean per operation; algbw = bytes / time; busbw = nccl-tests' bus bandwidth "
        "(all_reduce x 2(n-1)/n, all_gather x (n-1)/n of the gathered bytes, broadcast x 1); GB/s = 1e9 bytes/s."
    )
    if result["world_size"] == 1:
        text += (" One rank moves no data between processes: the times are the backend's own overhead, and the "
                 "busbw of all_reduce and all_gather is 0 by definition.")
    elif result["backend"] == "gloo" and result["nodes"] == 1:
        text += (" Gloo on one node goes through loopback TCP: these figures measure this host's memory and TCP "
                 "stack, not a network.")
    return text


def _human_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
