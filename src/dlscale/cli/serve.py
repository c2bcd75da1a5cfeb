"""``dlscale serve RUN``: answer predictions over HTTP with dynamic batching. Parses, then calls
``dlscale.serve.serve``, which runs until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a trained run over HTTP with dynamic batching",
        description=(
            "Load a run written by dlscale train and answer POST /predict (JSON inputs or an image upload), "
            "POST /generate (GPT runs), GET /health, /ready, /metrics (Prometheus) and / (a page to try it). "
            "Concurrent requests are batched: a full batch goes at once, otherwise the oldest request waits "
            "at most --max-delay-ms. SIGTERM lets in-flight requests finish."
        ),
        epilog="examples:\n  dlscale serve runs/<run>\n  dlscale serve runs/<run> --port 8080 --max-batch-size 64 --max-delay-ms 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("run_dir", metavar="RUN", help="a run directory written by dlscale train")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=8000, help="port (default 8000)")
    add("--max-batch-size", type=int, default=32, help="most samples per model batch (default 32)")
    add("--max-delay-ms", type=float, default=5.0, help="longest the oldest request waits for a fuller batch (default 5)")
    add("--max-queue", type=int, default=1024, help="requests that may wait; more get 503 with Retry-After (default 1024)")
    add("--max-body-mb", type=float, default=8.0, help="largest request body in MiB; larger get 413 (default 8)")
    add("--max-inputs", type=int, default=1024, help="most samples in one request; more get 413 (default 1024)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add("--precision", default="auto", help="auto (measured at start-up: bf16/fp16 only when at least 10%% faster than "
        "fp32 and giving fp32's class for 99%% of samples), fp32, bf16 or fp16")
    add("--compile", default="auto", choices=("auto", "on", "off"), help="torch.compile the model (CUDA graphs on CUDA); "
        "auto: on CUDA when measured 10%% faster, never on a CPU (default auto)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dlscale.serve import serve

    serve(
        args.run_dir, host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue, max_body_mb=args.max_body_mb, max_inputs=args.max_inputs, device=args.device,
        precision=args.precision, compile=args.compile,
    )
    return 0
