"""`dlscale bench serve`: the load goes to loopback only, the open loop counts latency from
when a request was due (a server that falls behind shows), and the command end to end
against a dlscale serve it starts itself. Speed itself is measured in benchmarks/serve."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import dlscale
from dlscale.bench import serve as bench_serve
from dlscale.cli import main
from dlscale.errors import UserError


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://192.0.2.7", "https://127.0.0.1:8000", "ftp://127.0.0.1/", "127.0.0.1:8000"])
def test_load_is_refused_for_anything_but_http_to_a_loopback_address(url):
    with pytest.raises(UserError) as refused:
        bench_serve.loopback_url(url)
    assert "--url" in str(refused.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/", "http://localhost:9", "http://[::1]:8000", "http://127.3.4.5"])
def test_loopback_addresses_are_accepted(url):
    assert bench_serve.loopback_url(url) == url.rstrip("/")


def test_a_request_body_holds_the_samples_in_the_model_shape():
    body = json.loads(bench_serve.request_body({"input_shape": [1, 8, 8], "input_kind": "image"}, None, 3, seed=0))
    inputs = body["inputs"]
    assert len(inputs) == 3 and all(len(s) == 1 and len(s[0]) == 8 and len(s[0][0]) == 8 for s in inputs)
    tokens = json.loads(bench_serve.request_body({"input_shape": [16], "input_kind": "tokens", "num_outputs": 5}, None, 2, seed=0))
    assert len(tokens["inputs"]) == 2 and all(isinstance(t, int) and 0 <= t < 5 for s in tokens["inputs"] for t in s)
    with pytest.raises(UserError, match="--input-shape"):
        bench_serve.request_body({}, None, 1, seed=0)


class SlowServer:
    """A real HTTP server (uvicorn) that answers one request at a time, each after 50 ms."""

    SERVICE_S = 0.05

    def __init__(self):
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, PlainTextResponse
        from starlette.routing import Route

        lock = asyncio.Lock()

        async def predict(request):
            await request.body()
            async with lock:
                await asyncio.sleep(self.SERVICE_S)
            return JSONResponse({"predictions": [{"class": 0}]})

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async def model(request):  # a server that answers far more than any dlscale server would
            return PlainTextResponse("x" * (bench_serve.MAX_ANSWER_BYTES + 1))

        app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/model", model)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)


def test_an_answer_larger_than_any_dlscale_answer_is_refused_unread():
    server = SlowServer()
    try:
        with pytest.raises(UserError, match="answered more than 1048576 bytes"):
            bench_serve.describe_server(server.url)
    finally:
        server.stop()


def test_the_open_loop_counts_latency_from_when_each_request_was_due():
    """At twice what the server can answer, requests queue: the open loop's p99 must show the
    queue (far above one service time), while one closed-loop client sees the service time."""
    server = SlowServer()
    try:
        load = bench_serve.ServeLoad(duration=1.0, warmup=0.0, timeout=20)
        body = b'{"inputs": [[0.0]]}'
        closed = asyncio.run(bench_serve.closed_loop(server.url, body, 1, load))
        opened = asyncio.run(bench_serve.open_loop(server.url, body, 2 / SlowServer.SERVICE_S, load))
    finally:
        server.stop()
    closed_row = bench_serve._row("closed", load, closed, None, None, concurrency=1)
    open_row = bench_serve._row("open", load, opened, None, None, rate=40.0)
    assert closed_row["errors"] == 0 and open_row["errors"] == 0
    assert closed_row["latency_p50_ms"] < 10 * 1000 * SlowServer.SERVICE_S
    # ~40 requests due within 1 s, answered 20 per second: the last waited about a second
    assert open_row["latency_p99_ms"] > 8 * 1000 * SlowServer.SERVICE_S
    assert open_row["requests"] >= 10 and open_row["predictions_per_second"] < 0.75 * 40


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("bench-serve") / "run"
    dlscale.fit("cnn", "digits", max_steps=20, run_dir=str(run_dir), verbose=False)
    return run_dir


@pytest.mark.slow
def test_bench_serve_starts_a_server_measures_both_loops_and_writes_its_result(run, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "dlscale", "bench", "serve", str(run), "--concurrency", "1,8", "--rates", "20",
         "--duration", "1", "--warmup", "0.3", "--p99-ms", "1000", "--max-delay-ms", "2", "--run-dir", str(out), "--json"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads((out / "bench-serve.json").read_text())
    assert result["kind"] == "serve" and result["provenance"]["dlscale"] == dlscale.__version__
    assert result["server"]["max_delay_ms"] == 2 and result["server"]["input_shape"] == [1, 8, 8]
    rows = result["results"]
    assert [(r["mode"], r["concurrency"], r["rate"]) for r in rows] == [("closed", 1, None), ("closed", 8, None), ("open", None, 20.0)]
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0
        assert row["predictions_per_second"] == pytest.approx(row["requests"] / row["seconds"])
        assert row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"] <= row["latency_max_ms"]
        assert row["mean_batch_size"] >= 1 and 0 < row["model_busy"] < 1  # read from the server's /metrics
    assert rows[0]["mean_batch_size"] == 1  # one client: every batch holds its one request
    assert result["max_rate_under_p99"] == 20.0  # a 1 s bound at 20 requests/s
    assert "highest rate with p99 under 1000 ms: 20 requests/s" in proc.stderr
    port = int(result["url"].rsplit(":", 1)[1])
    with pytest.raises(httpx.TransportError):  # the server it started is gone
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--url", "http://10.1.2.3:8000"], "loopback addresses only"),
        ([], "give RUN"),
        (["RUN", "--url", "http://127.0.0.1:9"], "not both"),
        (["--url", "http://127.0.0.1:9", "--max-batch-size", "4"], "start the server with them"),
        (["RUN", "--concurrency", "0"], "--concurrency"),
        (["RUN", "--rates", "fast"], "--rates"),
        (["RUN", "--duration", "0"], "--duration"),
        (["RUN", "--loops", "closed", "--rates", "10"], "--rates sets the open loop"),
        (["RUN", "--loops", "open"], "needs --rates"),
        (["RUN", "--loops", "half-open"], "--loops"),
        (["--url", "http://127.0.0.1:9"], "no answer"),
    ],
)
def test_bench_serve_mistakes_are_one_error_line_and_exit_2_with_nothing_written(tmp_path, capsys, argv, fragment):
    run_dir = tmp_path / "run"  # a model.json is all the checks before serving read
    run_dir.mkdir()
    (run_dir / "model.json").write_text("{}")
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    out = tmp_path / "bench"
    rc = main(["bench", "serve", *argv, "--run-dir", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "", captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], captured.err
    assert not out.exists()
