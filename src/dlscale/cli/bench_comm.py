"""``dlscale bench comm``: all-reduce, all-gather and broadcast bandwidth over a size
sweep, as nccl-tests reports it (time, algbw, busbw; see dlscale.bench.comm).

Three ways to run:

- **launcher** (``--nproc N`` above 1 or ``--nnodes`` above 1, started by a user): start N
  workers through torchrun's elastic agent (dlscale.distributed.elastic, like ``dlscale train``), each
  running ``dlscale bench comm --worker-of RUN_DIR <the same flags>``; rank 0 writes the
  rows to RUN_DIR/comm-rows.json, and the launcher prints the table and writes
  bench-comm.json.
- **worker** (``--worker-of``, or started by torchrun/srun/mpirun with a world size above
  1): join the process group and measure; with no ``--worker-of``, rank 0 reports itself.
- **one process** (``--nproc 1``): a process group of one rank, in this process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dlscale.errors import UserError

ROWS_FILE = "comm-rows.json"


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
    from dlscale.bench.comm import CommSettings, parse_ops, parse_sizes, shape_for
    from dlscale.distributed.env import detect

    for name in ("nproc", "iters", "nnodes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    settings = CommSettings(
        sizes=tuple(parse_sizes(args.sizes)), ops=tuple(parse_ops(args.ops)),
        dtype=args.dtype, iters=args.iters, warmup=args.warmup,
    )
    for size in settings.sizes:
        shape_for("all_reduce", size, settings.dtype, 1)  # a size below one element is refused here
    env = detect()
    if args.worker_of or env.world_size > 1:
        return _worker(args, settings, env)
    if args.nproc * args.nnodes == 1:  # one rank: measure in this process
        _check_memory(args, settings)
        return _worker(args, settings, env)
    return _launch(args, settings)


# --------------------------------------------------------------------------- launcher


def _launch(args: argparse.Namespace, settings: Any) -> int:
    from dlscale.runs import directory as runs
    from dlscale.bench.common import bench_run_dir, result_object, write_result
    from dlscale.distributed.elastic import LaunchPlan, failure_line, run_workers
    from dlscale.progress import make_console

    _check_devices(args)
    _check_memory(args, settings)
    world = args.nproc * args.nnodes
    run_dir = bench_run_dir("comm", f"{world}ranks", args.run_dir)
    runs.create_run_dir(run_dir)  # the workers' logs go here from the start
    plan = LaunchPlan(
        nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint,
        master_addr=args.master_addr, master_port=args.master_port,
    )
    console = make_console()
    _say(console, f"dlscale: starting {world} workers ({args.nproc} per node) through torchrun's elastic agent → {run_dir}")
    failed = run_workers(["bench", "comm", "--worker-of", str(run_dir), *_worker_flags(args)], plan, log_dir=run_dir / "logs")
    if failed:
        first = min(failed)
        said = failure_line(run_dir / "logs")
        reason = said[len("error: "):] if said else f"see its log under {run_dir / 'logs'}"
        raise UserError(f"worker rank {first} failed (exit code {failed[first]}): {reason}")
    rows_path = run_dir / ROWS_FILE
    if not rows_path.exists():
        if args.nnodes > 1:  # rank 0 ran on another node: its launcher reports
            _say(console, "done; rank 0 ran on another node, whose launcher prints and writes the result")
            return 0
        raise UserError(f"the workers finished but wrote no {rows_path}; see their logs under {run_dir / 'logs'}")
    written = json.loads(rows_path.read_text())
    result = result_object(written["rows"], kind="comm", **_meta(settings, written))
    path = write_result(run_dir, "comm", result)
    rows_path.unlink(missing_ok=True)  # the rows now live in bench-comm.json
    _report(console, result, path, args.json)
    return 0


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The measuring flags, passed on unchanged to every worker."""
    return [
        "--sizes", args.sizes, "--ops", args.ops, "--dtype", args.dtype, "--iters", str(args.iters),
        "--warmup", str(args.warmup), "--device", args.device, "--timeout", f"{args.timeout:g}",
    ]


def _check_devices(args: argparse.Namespace) -> None:
    """NCCL needs one GPU per worker: say so before starting workers that would collide."""
    import torch

    requested = args.device.strip().lower()
    if requested == "mps":
        raise UserError("torch.distributed has no MPS backend; use --device cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        if requested.startswith("cuda"):
            from dlscale.hardware.device import resolve_device

            resolve_device(requested)  # the clear "no CUDA GPU" error
        return
    if requested not in ("auto", "cuda"):
        if args.nproc > 1:
            raise UserError(f"--device {args.device} puts every worker on one GPU; with --nproc above 1 use --device cuda (one GPU per worker)")
        return
    gpus = torch.cuda.device_count()
    if args.nproc > gpus:
        raise UserError(f"--nproc {args.nproc} but this node has {gpus} GPU(s) and NCCL needs one per worker; "
                        f"use --nproc {gpus} or less, or --device cpu")


def _check_memory(args: argparse.Namespace, settings: Any) -> None:
    """On the CPU every worker holds its buffers in this node's memory: refuse a sweep that
    cannot fit rather than let the kernel kill a worker halfway."""
    import torch

    from dlscale.hardware.inventory import memory_bytes

    on_cpu = args.device.strip().lower() == "cpu" or not torch.cuda.is_available()
    total = memory_bytes()
    need = 3 * max(settings.sizes) * args.nproc  # buffers, plus the backend's staging copies
    if on_cpu and total and need > 0.8 * total:
        from dlscale.bench.comm import human_bytes

        raise UserError(
            f"--sizes up to {human_bytes(max(settings.sizes))} in {args.nproc} workers needs about "
            f"{human_bytes(need)} of memory and this machine has {human_bytes(total)}; pick smaller --sizes"
        )


# --------------------------------------------------------------------------- worker


def _worker(args: argparse.Namespace, settings: Any, env: Any) -> int:
    import torch.distributed as tdist

    from dlscale.distributed import process_group as dist
    from dlscale.bench.comm import measure
    from dlscale.hardware.device import resolve_device
    from dlscale.progress import make_console

    device = resolve_device(args.device, env.local_rank)
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"torch.distributed has no backend for {device.type}; use --device cpu")
    if env.world_size > 1:
        dist.init(env, device, args.timeout)
    own_group = not tdist.is_initialized()
    if own_group:  # one rank: dist.init starts nothing, so join a group of one here
        _single_rank_group(device, args.timeout)
    try:
        main = tdist.get_rank() == 0
        console = make_console()
        run_dir = None
        if not args.worker_of:  # started by torchrun/srun/mpirun or --nproc 1: rank 0 reports
            from dlscale.bench.common import bench_run_dir

            world = tdist.get_world_size()
            run_dir = dist.on_main(lambda: bench_run_dir("comm", f"{world}ranks", args.run_dir))
        say = (lambda text: _say(console, text)) if main else None
        if main:
            _say(console, f"dlscale bench comm: {tdist.get_world_size()} rank(s), {tdist.get_backend()} on {device.type}, "
                          f"{settings.dtype}")
        try:
            rows = measure(settings, device, say=say)
        except (RuntimeError, dist.DistError) as exc:
            failure = dist.collective_failure(exc, args.timeout)
            if failure is not None:
                raise failure from None
            raise
        if not main:
            return 0
        nodes = max(1, env.world_size // env.local_world_size) if env.world_size > 1 else 1
        meta = {"world_size": rows[0]["world_size"], "nodes": nodes, "backend": rows[0]["backend"], "device": rows[0]["device"]}
        if args.worker_of:
            from dlscale.runs.directory import write_json

            write_json(Path(args.worker_of) / ROWS_FILE, {**meta, "rows": rows})
            return 0
        from dlscale.bench.common import result_object, write_result

        result = result_object(rows, kind="comm", **_meta(settings, meta))
        path = write_result(run_dir, "comm", result)
        _report(console, result, path, args.json)
        return 0
    finally:
        if own_group:
            tdist.destroy_process_group()
        else:
            dist.shutdown()


def _single_rank_group(device: Any, timeout: float) -> None:
    import datetime

    import torch
    import torch.distributed as tdist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", store=tdist.HashStore(), rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=timeout),
    )


# --------------------------------------------------------------------------- output


def _meta(settings: Any, written: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys of the result object besides the rows."""
    return {
        "world_size": written["world_size"], "nodes": written["nodes"], "backend": written["backend"],
        "device": written["device"],
        "dtype": settings.dtype, "ops": list(settings.ops), "sizes": list(settings.sizes),
        "iters": settings.iters, "warmup": settings.warmup,
        "time": "slowest rank's mean over iters", "gbps": "1e9 bytes/s",
    }


def _report(console: Any, result: dict[str, Any], path: Path, as_json: bool) -> None:
    from dlscale.runs.directory import to_json

    console.print(_table(result))
    _say(console, _note(result))
    _say(console, f"result: {path}")
    if as_json:
        print(to_json(result), flush=True)


def _table(result: dict[str, Any]):
    from rich import box
    from rich.table import Table

    from dlscale.bench.comm import human_bytes, human_seconds

    title = f"bench comm: {result['world_size']} ranks, {result['backend']} on {result['device']}, {result['dtype']}"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    table.add_column("op", justify="left")
    for name in ("size", "time", "algbw GB/s", "busbw GB/s"):
        table.add_column(name, justify="right")
    previous = None
    for row in result["results"]:
        table.add_row(
            row["op"] if row["op"] != previous else "", human_bytes(row["bytes"]), human_seconds(row["time_s"]),
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


def _say(console: Any, text: str) -> None:
    """A plain line: no markup (paths hold brackets), no wrapping."""
    console.print(text, markup=False, soft_wrap=True)
