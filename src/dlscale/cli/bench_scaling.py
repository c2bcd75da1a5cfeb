"""``dlscale bench scaling``: the training benchmark at each worker count, with speedup,
efficiency and the step time split into compute, exposed communication and data wait."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "scaling",
        help="speedup and efficiency vs workers (weak or strong scaling)",
        description=(
            "Run the training benchmark with 1, 2, 4, ... workers (each count started like "
            "'dlscale train --nproc'). Weak scaling (default) keeps the per-worker batch; --strong "
            "keeps the global batch. Each row splits the step into compute (the same step without "
            "gradient all-reduce), exposed communication (the rest) and data wait."
        ),
        epilog="example:\n  dlscale bench scaling --nproc 1,2 --model resnet18 --data synthetic:3x32x32 --batch-size 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--nproc", default="1,2", help="worker counts to measure, e.g. 1,2,4 (default 1,2)")
    add("--model", default="cnn", help="zoo model name (default cnn)")
    add("--data", default="synthetic", help="synthetic (the model's shape) or synthetic:CxHxW / synthetic:SEQ")
    add("--batch-size", type=int, default=32, help="per-worker batch (weak) or global batch (--strong); default 32")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--weak", dest="strong", action="store_false", help="fixed per-worker batch (default)")
    mode.add_argument("--strong", dest="strong", action="store_true", help="fixed global batch")
    add("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="default auto")
    add("--device", default="auto", help="auto, cpu or cuda (default auto)")
    add("--steps", type=int, default=10, help="timed steps per repeat (default 10)")
    add("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    add("--repeats", type=int, default=3, help="repeats: the median is reported (default 3)")
    add("--timeout", type=float, default=300.0, help="seconds a collective may wait (default 300)")
    add("--run-dir", metavar="DIR", help="where to write bench-scaling.json and the workers' logs")
    add("--json", action="store_true", help="print one JSON object as the last stdout line")
    add("--worker-of", metavar="DIR", help=argparse.SUPPRESS)
    add("--per-worker-batch", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=run, strong=False)


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--nproc takes worker counts like 1,2,4; got {text!r}") from None
    if not counts or counts[0] < 1:
        raise UserError(f"--nproc takes worker counts of at least 1, like 1,2,4; got {text!r}")
    return counts


def _setting_and_workload(args: argparse.Namespace, per_worker_batch: int):
    from dlscale.bench.train import Setting
    from dlscale.cli.bench_train import _workload
    from dlscale.hardware.device import resolve_device, resolve_precision
    from dlscale.models import model_info

    info = model_info(args.model)
    workload = _workload(info, args.data)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    precision = resolve_precision(args.precision, device)
    cuda = device.type == "cuda"
    return workload, Setting(per_worker_batch, precision, False, cuda and info.conv), device


def run(args: argparse.Namespace) -> int:
    for name in ("steps", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.worker_of:
        return _worker(args)
    return _launcher(args)


def _worker(args: argparse.Namespace) -> int:
    from dlscale.distributed import process_group as dist
    from dlscale.runs import directory as runs
    from dlscale.bench.scaling import measure_workers
    from dlscale.distributed.env import detect

    workload, setting, device = _setting_and_workload(args, args.per_worker_batch)
    env = detect()
    dist.init(env, device, args.timeout)
    try:
        row = measure_workers(workload, setting, device, args.steps, args.warmup, args.repeats)
        if dist.is_main():
            runs.write_json(Path(args.worker_of) / f"scaling-{row['workers']}.json", row)
    finally:
        dist.shutdown()
    return 0


def _launcher(args: argparse.Namespace) -> int:
    import torch

    from dlscale.runs import directory as runs
    from dlscale.bench.common import bench_run_dir, result_object, write_result
    from dlscale.bench.scaling import add_speedup
    from dlscale.distributed.elastic import LaunchPlan, failure_line, run_workers
    from dlscale.progress import make_console
    from dlscale.runs.directory import to_json

    counts = _counts(args.nproc)
    if args.strong:
        bad = [n for n in counts if args.batch_size % n]
        if bad:
            raise UserError(f"--strong keeps the global batch {args.batch_size}: it does not split over {bad} workers")
    workload, setting, device = _setting_and_workload(args, args.batch_size)  # validates model, data, device
    if device.type == "cuda" and counts[-1] > torch.cuda.device_count():
        raise UserError(f"--nproc {counts[-1]} needs {counts[-1]} GPUs; this machine has {torch.cuda.device_count()}")
    console = make_console()
    if device.type == "cpu" and counts[-1] > (os.cpu_count() or 1):
        console.print(f"note: {counts[-1]} workers share {os.cpu_count()} CPU cores: expect efficiency to fall for that reason")
    run_dir = runs.create_run_dir(bench_run_dir("scaling", workload.info.name, args.run_dir))

    rows = []
    for n in counts:
        per_worker = args.batch_size // n if args.strong else args.batch_size
        console.print(f"measuring {n} worker(s), batch {per_worker} each ...")
        worker_args = [
            "bench", "scaling", "--worker-of", str(run_dir), "--per-worker-batch", str(per_worker),
            "--model", args.model, "--data", args.data, "--precision", setting.precision, "--device", device.type,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
            "--timeout", str(args.timeout), "--batch-size", str(args.batch_size),
        ]
        failed = run_workers(worker_args, LaunchPlan(nproc=n), log_dir=run_dir / "logs" / f"{n}-workers")
        if failed:
            said = failure_line(run_dir / "logs" / f"{n}-workers")
            raise UserError(f"the {n}-worker run failed: {said[7:] if said else 'see ' + str(run_dir / 'logs')}")
        row_file = run_dir / f"scaling-{n}.json"
        rows.append(json.loads(row_file.read_text()))
        row_file.unlink()
    add_speedup(rows, args.strong)
    for row in rows:
        row.update(model=workload.info.name, precision=setting.precision, device=device.type)

    result = result_object(rows, kind="scaling", mode="strong" if args.strong else "weak")
    path = write_result(run_dir, "scaling", result)
    _print_table(console, rows, args.strong)
    console.print(f"result written to {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _print_table(console, rows: list[dict[str, Any]], strong: bool) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"bench scaling ({'strong' if strong else 'weak'})", box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True)
    for column in ("workers", "batch", "samples/s", "speedup", "eff.", "step ms", "compute", "comm", "data"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["workers"]), str(r["per_worker_batch"]), f"{r['samples_per_second']:,.0f}",
            f"{r['speedup']:.2f}x", f"{100 * r['efficiency']:.1f}%", f"{1e3 * r['step_time_s']:.2f}",
            f"{1e3 * r['compute_s']:.2f}", f"{1e3 * r['comm_exposed_s']:.2f}", f"{1e3 * r['data_wait_s']:.3f}",
        )
    console.print(table)
    console.print(
        "batch: per worker; compute: the step in ms with the gradient all-reduce switched off; comm: the ms the "
        "backward pass did not hide; data: ms fetching the batch (synthetic, on the device: near zero). "
        "Medians of the repeats, slowest worker."
    )
