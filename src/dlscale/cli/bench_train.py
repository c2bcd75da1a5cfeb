"""``dlscale bench train``: training throughput on synthetic data for one setting, the
largest batch that fits (``--batch-size auto``), or the fastest of a grid (``--tune``)."""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.errors import UserError
from dlscale.training.config import PRECISIONS


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
    add("--precision", default="auto", choices=PRECISIONS, help="default auto: bf16 on GPUs that have it, else fp32")
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (default: on for CUDA)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: conv nets on CUDA")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    add("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    add("--warmup", type=int, default=None, help="warm-up steps, timed apart (default 3; 10 when compiling)")
    add("--repeats", default="3", help="repeats of the timed steps: median and spread (default 3), or 'auto': "
        "repeat until the median settles within 5%% (at least 3, within --budget-s)")
    add("--budget-s", type=float, default=60.0, help="seconds per setting that --repeats auto may spend (default 60)")
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
    from dlscale.bench.run_train import TrainBenchRequest, run_bench_train
    from dlscale.progress import SweepProgress, make_console
    from dlscale.runs.files import to_json

    from dlscale.bench.reliability import parse_repeats

    for name in ("steps", "max_batch"):
        _positive(name.replace("_", "-"), getattr(args, name))
    repeats = parse_repeats(args.repeats)
    if args.budget_s <= 0:
        raise UserError(f"--budget-s must be more than 0, got {args.budget_s}")
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    batch_size = None
    if args.batch_size != "auto":
        try:
            batch_size = int(args.batch_size)
        except ValueError:
            raise UserError(f"--batch-size must be a whole number or 'auto', got {args.batch_size!r}") from None
        _positive("batch-size", batch_size)

    console = make_console()
    request = TrainBenchRequest(
        model=args.model, data=args.data, batch_size=batch_size, precision=args.precision, compile=args.compile,
        channels_last=args.channels_last, device=args.device, steps=args.steps, warmup=args.warmup,
        repeats=repeats, budget_s=args.budget_s, memory_cap_gib=args.memory_cap, max_batch=args.max_batch, tune=args.tune,
        run_dir=args.run_dir,
    )
    with SweepProgress(console) as progress:
        result, path = run_bench_train(request, say=progress.say, progress=progress)
    _print_table(console, result, tuned=args.tune)
    console.print(f"result written to {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _print_table(console, result: dict[str, Any], tuned: bool) -> None:
    """One line per setting, narrow enough for an 80-column terminal or log."""
    from rich import box
    from rich.table import Table

    from dlscale.bench.reliability import warning

    rows = result["results"]
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
    for r in rows:
        if r["stable"] is not None:
            console.print(f"batch {r['batch_size']}, {r['precision']}: {r['repeats']} repeats, median "
                          + ("settled within 5%" if r["stable"] else "did not settle within 5% before --budget-s ran out"))
    if tuned and result.get("tied"):
        a, b = (_setting_text(s) for s in result["tied"])
        console.print(f"fastest: no clear winner between {a} and {b} (their repeats overlap); "
                      "re-run on a quiet machine or with more --repeats", markup=False)
    elif tuned and rows and rows[0]["loss_finite"]:
        best = rows[0]
        console.print(f"fastest safe setting: {_setting_text(best)}: {best['samples_per_second']:,.1f} samples/s")
    if warning(result):
        console.print(warning(result), markup=False, soft_wrap=True)


def _setting_text(setting: dict[str, Any]) -> str:
    return (f"batch {setting['batch_size']}, {setting['precision']}, {'compiled' if setting['compiled'] else 'eager'}"
            f"{', channels_last' if setting['channels_last'] else ''}")
