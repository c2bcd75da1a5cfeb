"""``dlscale bench data``: the input pipeline's samples/s by loader processes and decoder,
beside the model's training rate, and whether a run would be input-bound."""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.progress import say
from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "data",
        help="input pipeline: samples/s by loader processes and decoder, against the training rate",
        description=(
            "Time the training data's decoding alone (one process, per decoder), the training feed at each "
            "--workers count (the run's augmentation and batches), and the model's training step on this "
            "device; say whether training would wait for data and how many loader processes it needs."
        ),
        epilog="example:\n  dlscale bench data --data photos/ --model resnet18 --workers 0,1,2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--data", required=True, help="the data as dlscale train takes it (an image folder, shards, a text, ...)")
    add("--model", default="resnet18", help="zoo model whose training rate the loader must keep up with (default resnet18)")
    add("--workers", default="0,1,2", help="loader process counts to time, comma-separated (default 0,1,2)")
    add("--batch-size", type=int, default=64, help="batch size of the feed and the training step (default 64)")
    add("--seconds", type=float, default=6.0, help="seconds of loading timed per setting, over 3 repeats (default 6)")
    add("--augment", choices=("auto", "none", "standard"), default="auto", help="image folders: as dlscale train (default auto)")
    add("--image-size", type=int, metavar="PIXELS", help="image folders: as dlscale train")
    add("--train-steps", type=int, default=5, help="timed training steps per repeat (default 5)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    add("--run-dir", metavar="DIR", help="where to write bench-data.json (default runs/<time>-bench-data-<model>)")
    add("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(handler=run)


def _workers(text: str) -> tuple[int, ...]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--workers takes process counts separated by commas, such as 0,1,2; got {text!r}") from None
    if min(values) < 0:
        raise UserError(f"--workers counts must be 0 or more; got {text!r}")
    return tuple(dict.fromkeys(values))


def run(args: argparse.Namespace) -> int:
    from dlscale.bench.data import DataBenchRequest, run_bench_data
    from dlscale.bench.reliability import warning
    from dlscale.progress import make_console
    from dlscale.runs.files import to_json

    for name in ("batch_size", "train_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.seconds <= 3600:
        raise UserError(f"--seconds must be more than 0 and at most 3600, got {args.seconds}")
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size must be at least 1, got {args.image_size}")
    console = make_console()
    request = DataBenchRequest(
        data=args.data, model=args.model, workers=_workers(args.workers), batch_size=args.batch_size,
        seconds=args.seconds, augment=args.augment, image_size=args.image_size, device=args.device,
        train_steps=args.train_steps, run_dir=args.run_dir,
    )
    result, path = run_bench_data(request, say=lambda text: say(console, text))
    _print_table(console, result)
    say(console, result["advice"])
    if warning(result):
        say(console, warning(result))
    say(console, f"result written to {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _print_table(console: Any, result: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title="bench data", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for column in ("workers", "samples/s", "±", "first batch s", "train samples/s", "input-bound"):
        table.add_column(column, justify="right")
    for r in result["results"]:
        table.add_row(str(r["workers"]), f"{r['samples_per_second']:,.0f}", f"{r['spread']:,.0f}",
                      f"{r['startup_s']:.2f}", f"{r['train_samples_per_second']:,.0f}", "yes" if r["input_bound"] else "no")
    console.print(table)
    for name, d in result["decode"].items():
        say(console, f"decode alone, one process, {name}: {d['samples_per_second']:,.0f} samples/s (± {d['spread']:,.0f})")
