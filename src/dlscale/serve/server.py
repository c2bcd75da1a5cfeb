"""``serve(run_dir)``: load a trained run and answer HTTP requests with uvicorn until SIGINT or
SIGTERM. uvicorn's graceful shutdown stops accepting connections, lets in-flight requests
finish, then runs the app's shutdown (which stops the model's worker thread)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from dlscale.errors import UserError


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 32,
    max_delay_ms: float = 5.0,
    max_queue: int = 1024,
    max_body_mb: float = 8.0,
    max_inputs: int = 1024,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
) -> None:
    import uvicorn

    import dlscale
    from dlscale.serve.app import create_app
    from dlscale.serve.settings import check_choices, resolve

    if max_batch_size < 1 or max_queue < 1 or max_inputs < 1:
        raise UserError("--max-batch-size, --max-queue and --max-inputs must be at least 1")
    if max_delay_ms < 0 or max_body_mb <= 0:
        raise UserError("--max-delay-ms must be at least 0 and --max-body-mb above 0")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    check_choices(precision, compile)
    model = dlscale.load(run_dir, device=device, precision=precision)
    say = lambda text: print(f"dlscale: {text}", file=sys.stderr, flush=True)  # noqa: E731
    settings = resolve(model, max_batch_size, precision, compile, note=say)
    say(f"settings: {settings.reason}")
    app = create_app(model, max_batch_size, max_delay_ms, max_queue, max_body_mb, max_inputs, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    print(
        f"dlscale: serving {run_dir} at http://{host}:{port} on {model.device} in {model.precision}"
        f"{', compiled' if settings.compiled else ''} (batch up to {max_batch_size}, delay {max_delay_ms:g} ms)",
        file=sys.stderr, flush=True,
    )
    stops: list[int] = []
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains on SIGINT/SIGTERM, then raises the signal again with the handler it
        # found installed; this one makes a drained stop end the command normally (exit 0).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda number, frame: stops.append(number))
    try:
        server.run()
    except SystemExit:  # uvicorn's way to say it could not start: it logged the reason above
        if server.started:
            raise
        raise UserError(f"could not serve at {host}:{port} (see the line above); is the port in use? choose another --port") from None
    if stops:
        print(f"dlscale: stopped on {signal.Signals(stops[0]).name}", file=sys.stderr, flush=True)
