"""``dlscale bench serve``: its flags, the table and the result file."""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.cli.bench_infer import _integers
from dlscale.progress import say
from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serving: predictions/s and p50/p90/p99 latency of an HTTP server under load, and the highest rate under a p99 bound",
        description=(
            "Send real HTTP load to a running server (--url, loopback only) or to a dlscale serve of RUN started "
            "here: a closed loop over --concurrency (each client sends its next request when the previous is "
            "answered), then an open loop of Poisson arrivals at --rates (MLPerf Inference's Server scenario; "
            "default: 5%%-125%% of the closed loop's peak). Reports predictions/s, latency p50/p90/p99, errors, "
            "the server's mean batch size, and the highest rate whose p99 stays under --p99-ms."
        ),
        epilog=(
            "examples:\n"
            "  dlscale bench serve runs/<run> --concurrency 1,8,64\n"
            "  dlscale bench serve runs/<run> --max-batch-size 1 --concurrency 64 --rates 200,400\n"
            "  dlscale bench serve --url http://127.0.0.1:8000 --p99-ms 15 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("run", nargs="?", metavar="RUN", help="a run directory: start dlscale serve on it here (on a free loopback port)")
    add("--url", help="a running server instead, such as http://127.0.0.1:8000 (loopback addresses only)")
    add("--concurrency", default="1,8,64", help="closed loop: comma-separated numbers of concurrent clients (default 1,8,64)")
    add("--rates", help="open loop: comma-separated requests/s (default: 5,10,25,50,75,100,125%% of the closed loop's peak)")
    add("--loops", default="closed,open", help="which loops to run: closed, open or closed,open (default both)")
    add("--p99-ms", type=float, default=15.0, help="the latency bound (default 15, MLPerf's ResNet-50 server bound)")
    add("--duration", type=float, default=5.0, help="timed seconds per setting (default 5)")
    add("--warmup", type=float, default=1.0, help="untimed seconds before each setting (default 1)")
    add("--max-requests", type=int, default=50_000, help="most timed requests per setting (default 50000)")
    add("--samples-per-request", type=int, default=1, help="samples in each request (default 1)")
    add("--input-shape", metavar="CxHxW", help="one sample's shape, for a --url server without GET /model")
    add("--timeout", type=float, default=30.0, help="seconds before a request counts as an error (default 30)")
    served = p.add_argument_group("the server started for RUN (as dlscale serve takes them)")
    served.add_argument("--max-batch-size", type=int, help="most samples per model batch (serve's default 32)")
    served.add_argument("--max-delay-ms", type=float, help="longest the oldest request waits for a fuller batch (serve's default 5)")
    served.add_argument("--max-queue", type=int, help="requests that may wait before 503 (serve's default 1024)")
    served.add_argument("--device", help="auto, cpu, cuda or cuda:N (serve's default auto)")
    served.add_argument("--precision", help="auto, fp32, bf16 or fp16 (serve's default auto: measured)")
    served.add_argument("--compile", choices=("auto", "on", "off"), help="serve's --compile (default auto)")
    add("--run-dir", metavar="DIR", help="where to write the result (default runs/<UTC-time>-bench-serve-<model>)")
    add("--json", action="store_true", help="print the result object as the last line of stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dlscale.bench.common import bench_run_dir
    from dlscale.bench.reliability import warning
    from dlscale.bench.serve import ServeLoad, describe_server, loopback_url, run_bench_serve
    from dlscale.progress import make_console
    from dlscale.runs.files import to_json

    if (args.run is None) == (args.url is None):
        raise UserError("give RUN (a run directory to serve here) or --url (a running server), not both or neither")
    flags = _server_flags(args)
    if args.url and flags:
        raise UserError("--max-batch-size, --max-delay-ms, --max-queue, --device, --precision and --compile set the server started for RUN; "
                        "with --url, start the server with them instead")
    loops = {part.strip() for part in args.loops.split(",") if part.strip()}
    if not loops or loops - {"closed", "open"}:
        raise UserError(f"--loops takes closed, open or closed,open; got {args.loops!r}")
    if args.rates and "open" not in loops:
        raise UserError("--rates sets the open loop; add it to --loops (closed,open)")
    load = ServeLoad(
        loops=tuple(sorted(loops)),
        concurrencies=tuple(_integers("--concurrency", args.concurrency, ",")),
        rates=tuple(_rates(args.rates)) if args.rates else None,
        duration=args.duration, warmup=args.warmup, max_requests=args.max_requests, p99_ms=args.p99_ms,
        samples_per_request=args.samples_per_request, timeout=args.timeout,
    )
    load.check()
    shape = tuple(_integers("--input-shape", args.input_shape, "x")) if args.input_shape else None
    if args.url:  # refused, or found not answering, before anything is written
        describe_server(loopback_url(args.url))
    name = Path(args.run).name if args.run else "url"
    run_dir = bench_run_dir("serve", name, args.run_dir)

    console = make_console()
    target = f"dlscale serve {args.run}" + (f" ({' '.join(flags)})" if flags else "") if args.run else args.url
    say(console, f"dlscale bench serve: {target} · {load.warmup:g} s warm-up + {load.duration:g} s per setting · p99 bound {load.p99_ms:g} ms")
    with _Progress(console) as progress:
        result, path = run_bench_serve(
            load, run_dir, url=args.url, run=args.run, server_flags=flags, input_shape=shape,
            step=progress.step, note=lambda text: say(console, f"note: {text}"),
        )
    console.print(_table(result))
    say(console, _verdict(result))
    if warning(result):
        say(console, warning(result))
    say(console, f"result: {path}")
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _server_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in ("max_batch_size", "max_delay_ms", "max_queue", "device", "precision", "compile"):
        value = getattr(args, name)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return flags


def _rates(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--rates takes requests per second separated by ',', such as 100,200,400; got {text!r}") from None
    if not values:
        raise UserError(f"--rates takes requests per second separated by ',', such as 100,200,400; got {text!r}")
    return values


class _Progress:
    """One line per setting as it starts; on a terminal, a bar over the setting's seconds."""

    def __init__(self, console: Any) -> None:
        self.console, self.progress, self.task = console, None, None

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def step(self, label: str, seconds: float) -> None:
        say(self.console, f"{label} ({seconds:g} s)")
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(label, total=None)


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _table(result: dict[str, Any]):
    from rich import box
    from rich.table import Table

    table = Table(title=f"serving: {result.get('model') or result['url']} at {result['url']}",
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for name in ("load", "pred/s", "p50 ms", "p90 ms", "p99 ms", "errors", "batch", "model busy"):
        table.add_column(name, justify="left" if name == "load" else "right")
    for row in result["results"]:
        load = f"{row['concurrency']} clients" if row["mode"] == "closed" else f"{row['rate']:g} req/s"
        table.add_row(
            load, _number(row["predictions_per_second"]), _number(row["latency_p50_ms"], 2),
            _number(row["latency_p90_ms"], 2), _number(row["latency_p99_ms"], 2), str(row["errors"]),
            _number(row["mean_batch_size"], 2),
            "—" if row["model_busy"] is None else f"{100 * row['model_busy']:.0f}%",
            style=None if row["within_p99_bound"] else "dim",
        )
    return table


def _verdict(result: dict[str, Any]) -> str:
    at = (f"{result['peak_concurrency']} concurrent clients" if result["peak_concurrency"] is not None
          else f"{result['peak_rate']:g} requests/s offered")
    peak = f"peak: {result['peak_predictions_per_second']:,.1f} predictions/s at {at}"
    bound = result["p99_bound_ms"]
    if not any(r["mode"] == "open" for r in result["results"]):
        return peak
    if result["max_rate_under_p99"] is None:
        return f"{peak}; no open-loop rate kept p99 under {bound:g} ms without errors"
    return (f"{peak}; highest rate with p99 under {bound:g} ms: {result['max_rate_under_p99']:g} requests/s "
            f"({result['predictions_per_second_under_p99']:,.1f} predictions/s answered)")
