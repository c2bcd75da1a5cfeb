"""``dlscale bench scaling``: the training benchmark at each worker count, with speedup,
efficiency and the step time split into compute, exposed communication and data wait."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.training.config import PRECISIONS


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
    add("--precision", default="auto", choices=PRECISIONS, help="default auto")
    add("--device", default="auto", help="auto, cpu or cuda (default auto)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="default: as `dlscale train` picks it (conv nets on CUDA; measured on a CPU)")
    add("--steps", type=int, default=10, help="timed steps per repeat (default 10)")
    add("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    add("--repeats", type=int, default=3,
        help="launches per worker count, interleaved across counts (1,2,1,2,...): medians and spread reported (default 3)")
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


def _request(args: argparse.Namespace, counts: tuple[int, ...]):
    from dlscale.bench.run_scaling import ScalingBenchRequest

    return ScalingBenchRequest(
        nproc=counts, model=args.model, data=args.data, batch_size=args.batch_size, strong=args.strong,
        precision=args.precision, device=args.device, channels_last=args.channels_last, steps=args.steps,
        warmup=args.warmup, repeats=args.repeats, timeout=args.timeout, run_dir=args.run_dir,
    )


def run(args: argparse.Namespace) -> int:
    for name in ("steps", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.worker_of:  # one worker of one worker count, started by the launcher below
        from dlscale.bench.run_scaling import run_scaling_worker

        run_scaling_worker(_request(args, ()), Path(args.worker_of), args.per_worker_batch)
        return 0

    from dlscale.bench.reliability import warning
    from dlscale.bench.run_scaling import run_bench_scaling
    from dlscale.progress import SweepProgress, make_console
    from dlscale.runs.files import to_json

    console = make_console()
    with SweepProgress(console) as progress:
        result, path = run_bench_scaling(_request(args, tuple(_counts(args.nproc))), say=progress.say, progress=progress)
    _print_table(console, result["results"], args.strong)
    for row in result["results"]:
        if row["superlinear"]:
            console.print(f"note: {row['note']}", markup=False, soft_wrap=True)
    if warning(result):
        console.print(warning(result), markup=False, soft_wrap=True)
    console.print(f"result written to {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _print_table(console, rows: list[dict[str, Any]], strong: bool) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"bench scaling ({'strong' if strong else 'weak'})", box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True)
    for column in ("workers", "batch", "samples/s", "±", "speedup", "eff.", "step ms", "compute", "comm", "data"):
        table.add_column(column, justify="right")
    for r in rows:
        half_range = (r["samples_per_second_p90"] - r["samples_per_second_p10"]) / 2 / r["samples_per_second"]
        table.add_row(
            str(r["workers"]), str(r["per_worker_batch"]), f"{r['samples_per_second']:,.0f}", f"{100 * half_range:.0f}%",
            f"{r['speedup']:.2f}x", f"{100 * r['efficiency']:.1f}%", f"{1e3 * r['step_time_s']:.2f}",
            f"{1e3 * r['compute_s']:.2f}", f"{1e3 * r['comm_exposed_s']:.2f}", f"{1e3 * r['data_wait_s']:.3f}",
        )
    console.print(table)
    console.print(
        "batch: per worker; ±: half the p10-p90 range of the repeats' samples/s; compute: the step in ms with "
        "the gradient all-reduce switched off (one worker: the step itself); comm: the ms the backward pass did "
        "not hide (0 with one worker: nothing to all-reduce); data: ms fetching the batch (synthetic, on the "
        "device: near zero). Medians of the interleaved repeats, slowest worker; speedup from those medians."
    )
