"""``dlscale bench train``: training throughput on synthetic data for one setting, the
largest batch that fits (``--batch-size auto``), or the fastest of a grid (``--tune``)."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="training throughput on synthetic data (samples/s, FLOP/s, MFU, memory)",
        description=(
            "Train a model on one random batch kept on the device and time the real training step: "
            "warm-up steps timed apart, then --repeats x --steps timed steps, reported as median and "
            "spread. MFU is given against the datasheet peak (GPUs the table knows) and against the "
            "measured large-GEMM peak (`dlscale hw`)."
        ),
        epilog=(
            "examples:\n"
            "  dlscale bench train --model resnet18 --data synthetic:3x32x32 --batch-size 64\n"
            "  dlscale bench train --model gpt-tiny --batch-size auto --memory-cap 4\n"
            "  dlscale bench train --model cnn --tune --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--model", default="cnn", help="zoo model name (default cnn)")
    add("--data", default="synthetic", help="synthetic (the model's input shape) or synthetic:CxHxW / synthetic:SEQ")
    add("--batch-size", default="64", help="batch size, or 'auto' for the largest that fits (default 64)")
    add("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="default auto: bf16 on GPUs that have it, else fp32")
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (default: on for CUDA)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: conv nets on CUDA")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    add("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    add("--warmup", type=int, default=None, help="warm-up steps, timed apart (default 3; 10 when compiling)")
    add("--repeats", type=int, default=3, help="repeats of the timed steps: median and spread (default 3)")
    add("--memory-cap", type=float, default=None, help="GiB the process may use on CPU with --batch-size auto (default half the RAM)")
    add("--max-batch", type=int, default=4096, help="largest batch --batch-size auto tries (default 4096)")
    add("--tune", action="store_true", help="try precision x compile x channels_last x batch size; report the fastest safe setting")
    add("--run-dir", metavar="DIR", help="where to write bench-train.json (default runs/<time>-bench-train-<model>)")
    add("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(handler=run)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name} must be at least 1, got {value}")


def run(args: argparse.Namespace) -> int:
    from dlscale.bench.common import bench_run_dir, result_object, write_result
    from dlscale.bench.train import Setting, find_max_batch, fits, measure
    from dlscale.hardware.device import resolve_device, resolve_precision
    from dlscale.hardware.inventory import memory_bytes
    from dlscale.models import model_info
    from dlscale.progress import make_console
    from dlscale.runs.directory import to_json

    for name in ("steps", "repeats", "max_batch"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    auto_batch = args.batch_size == "auto"
    if not auto_batch:
        try:
            batch_size = int(args.batch_size)
        except ValueError:
            raise UserError(f"--batch-size must be a whole number or 'auto', got {args.batch_size!r}") from None
        _positive("batch-size", batch_size)
    if not (args.data == "synthetic" or args.data.startswith("synthetic:")):
        raise UserError(f"bench train runs on synthetic data, got --data {args.data}; train on real data with 'dlscale train'")

    info = model_info(args.model)
    workload = _workload(info, args.data)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cuda = device.type == "cuda"
    compile_ = cuda if args.compile is None else args.compile
    channels_last = (cuda and info.conv) if args.channels_last is None else args.channels_last
    console = make_console()
    run_dir = bench_run_dir("train", info.name, args.run_dir)

    if auto_batch:
        cap = int(args.memory_cap * 2**30) if args.memory_cap else (memory_bytes() or 0) // 2 or None
        console.print(f"finding the largest batch that fits ({'CUDA memory' if cuda else f'memory cap {cap / 2**30:.1f} GiB'}) ...")
        batch_size = find_max_batch(
            lambda b: fits(workload, Setting(b, precision, False, channels_last), device, cap), limit=args.max_batch
        )
        if batch_size is None:
            raise UserError("not even a batch of 1 fits in memory; raise --memory-cap or pick a smaller model")
        console.print(f"largest batch that fits: {batch_size}")

    settings = [Setting(batch_size, precision, compile_, channels_last)]
    if args.tune:
        settings = _tune_grid(args, batch_size, device, info.conv)
    rows = []
    for setting in settings:
        warmup = args.warmup if args.warmup is not None else (10 if setting.compile else 3)
        console.print(f"measuring {_describe(setting)} ...")
        rows.append(measure(workload, setting, device, args.steps, warmup, args.repeats))
    if args.tune:
        safe = [r for r in rows if r["loss_finite"]]
        rows = sorted(safe, key=lambda r: -r["samples_per_second"]) + [r for r in rows if not r["loss_finite"]]

    result = result_object(rows, kind="train", auto_batch=auto_batch, tuned=args.tune)
    path = write_result(run_dir, "train", result)
    _print_table(console, rows, tuned=args.tune)
    console.print(f"result written to {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _workload(info, data: str):
    """The model and its synthetic sample shape (the model's own, or --data synthetic:SHAPE)."""
    from dlscale.bench.train import Workload
    from dlscale.data import DataSpec
    from dlscale.data.synthetic import parse_shape

    kind, shape = parse_shape(data, DataSpec(info.kind, info.default_input_shape, info.default_num_classes))
    if kind != info.kind:
        wanted = "synthetic:SEQ_LEN (token sequences)" if info.kind == "tokens" else "synthetic:CxHxW (images)"
        raise UserError(f"{info.name} needs {wanted}, not --data {data}")
    return Workload(info=info, input_shape=tuple(shape), num_classes=info.default_num_classes)


def _tune_grid(args: argparse.Namespace, batch_size: int, device, conv: bool):
    """Every combination worth trying on this device; a flag the user gave pins its dimension.
    fp16 only on CUDA (CPUs emulate it), channels_last only for conv nets."""
    from dlscale.bench.train import Setting

    cuda = device.type == "cuda"
    precisions = [args.precision] if args.precision != "auto" else ["fp32", "bf16"] + (["fp16"] if cuda else [])
    compiles = [args.compile] if args.compile is not None else [False, True]
    layouts = [args.channels_last] if args.channels_last is not None else ([False, True] if conv else [False])
    batches = sorted({max(1, batch_size // 2), batch_size})
    return [Setting(b, p, c, cl) for b, p, c, cl in itertools.product(batches, precisions, compiles, layouts)]


def _describe(setting) -> str:
    return (f"batch {setting.batch_size}, {setting.precision}, {'compiled' if setting.compile else 'eager'}"
            f"{', channels_last' if setting.channels_last else ''}")


def _print_table(console, rows: list[dict[str, Any]], tuned: bool) -> None:
    """One line per setting, narrow enough for an 80-column terminal or log."""
    from rich import box
    from rich.table import Table

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    table = Table(title="bench train" + (" (fastest first)" if tuned else ""), box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for column in ("batch", "prec", "mode", "samples/s", "step ms", "±", "TFLOP/s", "MFU", "MFU gemm", "GiB"):
        table.add_column(column, justify="right")
    for r in rows:
        achieved = r["achieved_flops_per_second"]
        memory = r["peak_memory_bytes"]
        table.add_row(
            str(r["batch_size"]), r["precision"],
            ("comp" if r["compiled"] else "eager") + ("+cl" if r["channels_last"] else ""),
            f"{r['samples_per_second']:,.0f}" if r["samples_per_second"] >= 100 else f"{r['samples_per_second']:.1f}",
            f"{1e3 * r['step_time_median_s']:.2f}", f"{1e3 * r['step_time_spread_s']:.2f}",
            "-" if achieved is None else f"{achieved / 1e12:.3f}",
            pct(r["mfu"]), pct(r["mfu_measured_peak"]),
            "-" if not memory else f"{memory / 2**30:.2f}",
        )
    console.print(table)
    warmups = ", ".join(f"{r['warmup_s']:.2f}" for r in rows)
    console.print(
        f"warm-up (timed apart, s): {warmups}; step ms: median over repeats, ± their spread (max - min); MFU: against the dense datasheet peak "
        "(GPUs the table knows); MFU gemm: against the measured GEMM peak (dlscale hw); GiB: peak "
        "memory (GPU allocated, or the process's peak resident set on CPU)"
    )
    for r in rows:
        if not r["loss_finite"]:
            console.print(f"[bold]loss was not finite[/] at batch {r['batch_size']}, {r['precision']}: not a safe setting")
    if tuned and rows and rows[0]["loss_finite"]:
        best = rows[0]
        console.print(
            f"fastest safe setting: batch {best['batch_size']}, {best['precision']}, "
            f"{'compiled' if best['compiled'] else 'eager'}{', channels_last' if best['channels_last'] else ''}: "
            f"{best['samples_per_second']:,.1f} samples/s"
        )
