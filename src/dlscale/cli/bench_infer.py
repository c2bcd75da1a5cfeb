"""``dlscale bench infer``: its flags, the sweep, the table and the result file."""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.errors import UserError
from dlscale.progress import say


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "infer",
        help="inference speed: predictions/s and latency p50/p90/p99 per batch size, precision and mode",
        description=(
            "Time inference of a zoo model (--model) or of a trained run (--run), for every batch size x "
            "precision x mode: predictions/s (batch size / mean latency) and latency p50/p90/p99 over at "
            "least 50 timed batches after warm-up, under torch.inference_mode. With --run, each setting "
            "also reports the run's test accuracy at that precision: speed and accuracy side by side. "
            "A setting this machine cannot do is listed as skipped, with the reason."
        ),
        epilog=(
            "examples:\n"
            "  dlscale bench infer --model cnn --batch-sizes 1,8,64 --precisions fp32,bf16\n"
            "  dlscale bench infer --model resnet18 --input-shape 3x32x32 --modes eager,compiled\n"
            "  dlscale bench infer --run runs/<run> --precisions fp32,bf16,int8 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--model", help="zoo model to time with fresh weights (default cnn)")
    what.add_argument("--run", metavar="RUN_DIR", help="a trained run: its model, weights (newest checkpoint) and test split")
    add = p.add_argument
    add("--batch-sizes", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    add("--precisions", help="comma-separated, of fp32, bf16, fp16, int8 (int8: dynamic quantization of "
        "Linear layers, CPU only); default fp32,bf16 on CPU, fp32,bf16,fp16 on CUDA")
    add("--modes", default="eager", help="comma-separated, of eager, compiled (torch.compile; CUDA graphs on CUDA); default eager")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: the best present)")
    add("--input-shape", metavar="CxHxW", help="one sample's shape for --model, e.g. 3x224x224, or a sequence length for language models")
    add("--batches", type=int, default=50, help="timed batches per setting (default and minimum 50)")
    add("--warmup", type=int, default=5, help="untimed batches before them (default 5)")
    add("--repeats", default="3", help="passes of --batches per setting: their predictions/s give the spread "
        "(default 3), or 'auto': repeat until the median settles within 5%% (at least 3, within --budget-s)")
    add("--budget-s", type=float, default=60.0, help="seconds per setting that --repeats auto may spend (default 60)")
    add("--run-dir", metavar="DIR", help="where to write the result (default runs/<UTC-time>-bench-infer-<model>)")
    add("--json", action="store_true", help="print the result object as the last line of stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dlscale.bench import infer, targets
    from dlscale.bench.common import bench_run_dir
    from dlscale.bench.reliability import parse_repeats, warning
    from dlscale.bench.run_infer import run_bench_infer
    from dlscale.hardware.device import describe, resolve_device
    from dlscale.progress import SweepProgress, make_console
    from dlscale.runs.files import to_json

    device = resolve_device(args.device)
    repeats = parse_repeats(args.repeats)
    if args.budget_s <= 0:
        raise UserError(f"--budget-s must be more than 0, got {args.budget_s}")
    settings = infer.InferSettings(
        batch_sizes=tuple(_integers("--batch-sizes", args.batch_sizes, ",")),
        precisions=_names(args.precisions) if args.precisions else infer.default_precisions(device),
        modes=_names(args.modes),
        batches=args.batches,
        warmup=args.warmup,
        repeats=repeats,
        budget_s=args.budget_s,
    )
    if args.run and args.input_shape:
        raise UserError("--input-shape goes with --model; a --run's data sets the input shape")
    shape = tuple(_integers("--input-shape", args.input_shape, "x")) if args.input_shape else None
    target = targets.run_target(args.run) if args.run else targets.zoo_target(args.model or "cnn", shape)
    run_dir = bench_run_dir("infer", target.name, args.run_dir)

    console = make_console()
    source = f"run {target.source_run}" if target.source_run else "fresh weights"
    say(
        console,
        f"dlscale bench infer: {target.name} ({source}) · input {'x'.join(map(str, target.input_shape))} · "
        f"{describe(device)} · {settings.warmup} warm-up + {settings.batches} timed batches per setting"
    )
    with SweepProgress(console, len(settings.batch_sizes) * len(settings.precisions) * len(settings.modes)) as bar:
        def step(label: str) -> None:  # a row's label ends in "batch N"; the accuracy pass before them is no row
            (bar.start if " batch " in label else bar.describe)(label)

        result, path = run_bench_infer(target, settings, device, run_dir, note=bar.note, step=step)
    rows = result["results"]
    console.print(_table(target.name, describe(device), rows))
    say(console, _fastest(rows, target.source_run is not None))
    compiled = [r for r in rows if r["mode"] == "compiled" and not r["skipped"]]
    if compiled:  # compilation lands in warm-up: shown here, never inside the latencies
        say(console, "compiled warm-up (includes compiling): " + ", ".join(
            f"{r['precision']} batch {r['batch_size']} {r['warmup_seconds']:.1f} s" for r in compiled))
    unsettled = [r for r in rows if r["stable"] is False]
    if repeats == "auto":
        say(console, f"--repeats auto: {len(unsettled)} of {len(rows)} settings did not settle within 5% before --budget-s ran out"
             if unsettled else "--repeats auto: every setting's median settled within 5%")
    if warning(result):
        say(console, warning(result))
    say(console, f"result: {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


# --------------------------------------------------------------------------- parsing


def _names(text: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    return tuple(dict.fromkeys(names))  # drop repeats, keep the order


def _integers(flag: str, text: str, sep: str) -> list[int]:
    parts = [part.strip() for part in text.split(sep)]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        example = "1,8,64" if sep == "," else "3x224x224"
        raise UserError(f"{flag} takes positive integers separated by '{sep}', such as {example}; got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} values must be at least 1; got {text!r}")
    return list(dict.fromkeys(values)) if sep == "," else values


# --------------------------------------------------------------------------- display


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(model: str, device: str, rows: list[dict[str, Any]]):
    from rich import box
    from rich.table import Table

    # No vertical rules: the table fits the 80 columns rich assumes off a terminal.
    table = Table(
        title=f"inference: {model} on {device}", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True
    )
    for name in ("batch", "precision", "mode", "predictions/s", "p50 ms", "p90 ms", "p99 ms", "test acc"):
        table.add_column(name, justify="left" if name in ("precision", "mode") else "right")
    for row in rows:
        head = (str(row["batch_size"]), row["precision"], row["mode"])
        if row["skipped"]:
            table.add_row(*head, "skipped", "—", "—", "—", "—", style="dim")
            continue
        accuracy = row["test_accuracy"]
        table.add_row(
            *head,
            f"{row['predictions_per_second']:,.0f}",
            _number(row["latency_p50_ms"]),
            _number(row["latency_p90_ms"]),
            _number(row["latency_p99_ms"]),
            "—" if accuracy is None else f"{100 * accuracy:.2f}%",
        )
    return table


def _setting(row: dict[str, Any]) -> str:
    return f"{row['precision']} {row['mode']} at batch {row['batch_size']}"


def _fastest(rows: list[dict[str, Any]], has_accuracy: bool) -> str:
    """The fastest setting, or none where the runner-up's [p10, p90] predictions/s over
    repeats overlaps the fastest's: then the order is luck, not a finding."""
    from dlscale.bench.reliability import overlap

    ran = [row for row in rows if not row["skipped"]]
    if not ran:
        return "fastest: none — every setting was skipped (see the notes above)"
    ranked = sorted(ran, key=lambda row: -row["predictions_per_second"])
    best = ranked[0]
    if len(ranked) > 1 and overlap(best, ranked[1], "predictions_per_second"):
        return (f"fastest: no clear winner between {_setting(best)} and {_setting(ranked[1])} (their repeats overlap); "
                "re-run on a quiet machine or with more --repeats")
    if best["test_accuracy"] is not None:
        accuracy = f"test accuracy {100 * best['test_accuracy']:.2f}%"
    else:
        accuracy = "test accuracy n/a" + ("" if has_accuracy else " (give --run RUN_DIR to measure it)")
    tokens = f" ({best['tokens_per_second']:,.0f} tokens/s)" if best.get("tokens_per_second") else ""
    return (
        f"fastest: {_setting(best)}: "
        f"{best['predictions_per_second']:,.0f} predictions/s{tokens}, p50 {best['latency_p50_ms']:.3f} ms, {accuracy}"
    )
