"""``dlscale bench serve``: predictions/s and latency of an HTTP server as serving is compared.

- Closed loop: a sweep over concurrent clients, each sending its next request as soon as the
  previous one is answered (Triton's ``perf_analyzer --concurrency-range``).
- Open loop: Poisson arrivals at given rates (MLPerf Inference's Server scenario). Latency
  counts from the moment a request was due, so a client that falls behind is not hidden
  (no coordinated omission).
- The highest offered rate whose p99 latency stays under ``--p99-ms`` with no errors.

The load is a real asynchronous HTTP client, aiohttp (httpx's AsyncClient was measured
first: against a server answering a constant, 512 requests/s with one client but 44 with 64,
where aiohttp gives 3,150: its connection pool, not the server, was the bottleneck). It is
bounded in requests, time and requests in flight, and it goes to loopback addresses only. The server is a ``dlscale serve`` (its
/model tells the input shape, its /metrics the batch sizes) or any server taking the same
``{"inputs": [...]}`` JSON (the serving peers benchmark)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlscale.bench.common import percentile
from dlscale.errors import UserError

RATE_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25)  # open-loop rates, as fractions of the closed loop's peak
MAX_IN_FLIGHT = 4096  # open loop: arrivals beyond this many unanswered requests count as errors ("overload")
READY_TIMEOUT_S = 120.0
JSON_HEADERS = {"content-type": "application/json"}
MAX_ANSWER_BYTES = 1 << 20  # /model, /metrics and one prediction are a few KiB


@dataclass
class ServeLoad:
    """What load to send: every setting runs ``warmup`` untimed seconds, then ``duration``
    timed seconds or ``max_requests`` timed requests, whichever ends first."""

    loops: tuple[str, ...] = ("closed", "open")
    concurrencies: tuple[int, ...] = (1, 8, 64)
    rates: tuple[float, ...] | None = None  # requests/s; None: RATE_FRACTIONS of the closed-loop peak
    duration: float = 5.0
    warmup: float = 1.0
    max_requests: int = 50_000
    p99_ms: float = 15.0
    samples_per_request: int = 1
    timeout: float = 30.0
    seed: int = 0

    def check(self) -> None:
        if not self.concurrencies or min(self.concurrencies) < 1 or max(self.concurrencies) > 1024:
            raise UserError("--concurrency values must be between 1 and 1024")
        if not self.loops or set(self.loops) - {"closed", "open"} or ("closed" not in self.loops and self.rates is None):
            raise UserError("--loops takes closed, open or both; the open loop alone needs --rates")
        if self.rates is not None and (not self.rates or min(self.rates) <= 0 or max(self.rates) > 1e6):
            raise UserError("--rates must be requests per second above 0 and at most 1000000")
        if not 0 < self.duration <= 3600 or not 0 <= self.warmup <= 600:
            raise UserError("--duration must be above 0 and at most 3600 s, --warmup between 0 and 600 s")
        if self.max_requests < 1 or self.samples_per_request < 1 or self.p99_ms <= 0 or self.timeout <= 0:
            raise UserError("--max-requests and --samples-per-request must be at least 1, --p99-ms and --timeout above 0")


@dataclass
class _Tally:
    """Latencies (seconds) of the answered requests and the failures by reason."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    first: float | None = None  # when the timed window started and ended
    last: float | None = None


# --------------------------------------------------------------------------- the target


def loopback_url(url: str) -> str:
    """``url`` without a trailing slash, refused unless every address its host names is a
    loopback address: this benchmark floods what it points at."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UserError(f"--url must be an http:// address such as http://127.0.0.1:8000, got {url!r}")
    try:
        port = parts.port or 80
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, ValueError) as exc:
        raise UserError(f"--url {url}: cannot resolve {parts.hostname!r} ({exc})") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise UserError(
            f"--url {url}: {parts.hostname} is {', '.join(outside)}, not this machine; "
            "dlscale bench serve sends load to loopback addresses only (127.0.0.1, ::1, localhost)"
        )
    return url.rstrip("/")


class LocalServer:
    """``dlscale serve RUN`` in a subprocess on a free loopback port, for ``bench serve RUN``;
    stopped with SIGTERM (it drains) when the benchmark ends."""

    def __init__(self, run_dir: str | Path, flags: list[str]):
        if not (Path(run_dir) / "model.json").is_file():
            raise UserError(f"{run_dir}: no model.json there; give a run directory written by dlscale train")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="dlscale-serve-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "dlscale", "serve", str(run_dir), "--port", str(self.port), *flags]
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"dlscale serve stopped before it was ready: {self._log_tail()}")
            try:
                if _http("GET", self.url + "/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise UserError(f"dlscale serve was not ready after {READY_TIMEOUT_S:.0f} s: {self._log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def _log_tail(self) -> str:
        self.log.flush()
        lines = [line for line in Path(self.log.name).read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "(it printed nothing)"


def describe_server(url: str) -> dict[str, Any]:
    """The server's /model (a dlscale server), or {} for a server without one."""
    try:
        status, text = _http("GET", url + "/model", timeout=10)
    except OSError as exc:
        raise UserError(f"--url {url}: no answer ({_reason(exc)}); is the server running?") from None
    if status != 200:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def request_body(info: dict[str, Any], input_shape: tuple[int, ...] | None, samples: int, seed: int) -> bytes:
    """One request's JSON: ``samples`` random samples of the model's input shape (the values do
    not change the work a model does; token models get token ids below their vocabulary)."""
    shape = tuple(input_shape or info.get("input_shape") or ())
    if not shape:
        raise UserError("the server does not say its input shape (no /model): give --input-shape, such as 64 or 3x32x32")
    rng = random.Random(seed)
    size = 1
    for dim in shape:
        size *= dim
    if info.get("input_kind") == "tokens":
        vocab = int(info.get("num_outputs") or 2)
        flat = [rng.randrange(vocab) for _ in range(samples * size)]
    else:
        flat = [round(rng.gauss(0.0, 1.0), 4) for _ in range(samples * size)]
    return json.dumps({"inputs": _nest(flat, (samples, *shape))}).encode()


def _nest(flat: list, shape: tuple[int, ...]) -> list:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def check_answer(url: str, body: bytes, samples: int) -> None:
    """One request before the load: it must be answered 200 with ``samples`` predictions."""
    try:
        status, text = _http("POST", url + "/predict", body, timeout=60)
    except OSError as exc:
        raise UserError(f"{url}/predict: no answer ({_reason(exc)})") from None
    if status != 200:
        raise UserError(f"{url}/predict answered {status}: {text[:300]}")
    try:
        predictions = json.loads(text)["predictions"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{url}/predict did not answer {{\"predictions\": [...]}}: {text[:300]}") from None
    if len(predictions) != samples:
        raise UserError(f"{url}/predict answered {len(predictions)} predictions for {samples} samples")


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, text) of one plain request (urllib: no pool needed for these few); an HTTP
    error status is an answer, not an exception. An answer over MAX_ANSWER_BYTES is refused
    unread: whatever listens on the port does not decide how much memory this takes."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=JSON_HEADERS if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _bounded(response, url)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _bounded(error, url)


def _bounded(response: Any, url: str) -> str:
    data = response.read(MAX_ANSWER_BYTES + 1)
    if len(data) > MAX_ANSWER_BYTES:
        raise UserError(f"{url} answered more than {MAX_ANSWER_BYTES} bytes; not a dlscale server's answer")
    return data.decode("utf-8", "replace")


def _reason(error: OSError) -> str:
    reason = getattr(error, "reason", None) or error
    return f"{type(reason).__name__}: {reason}"


# --------------------------------------------------------------------------- the load


async def _post(client: Any, body: bytes, tally: _Tally | None, due: float, window: tuple[float, float]) -> None:
    """One request; recorded in ``tally`` when it was due inside the timed window."""
    import aiohttp

    try:
        async with client.post("/predict", data=body, headers=JSON_HEADERS) as response:
            if (response.content_length or 0) > MAX_ANSWER_BYTES:  # not read: the connection is dropped
                reason = "oversized answer"
            else:
                await response.read()
                reason = None if response.status == 200 else str(response.status)
    except TimeoutError:
        reason = "timeout"
    except aiohttp.ClientError as exc:
        reason = type(exc).__name__
    done = time.perf_counter()
    if tally is None or not window[0] <= due < window[1]:
        return
    if reason is None:
        tally.latencies.append(done - due)
    else:
        tally.errors[reason] += 1
    tally.last = done if tally.last is None else max(tally.last, done)


def _client(url: str, connections: int, timeout: float) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        base_url=url, connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def closed_loop(url: str, body: bytes, concurrency: int, load: ServeLoad) -> _Tally:
    """``concurrency`` clients, each sending its next request when the previous is answered."""
    tally = _Tally()
    async with _client(url, concurrency, load.timeout) as client:
        start = time.perf_counter()
        window = (start + load.warmup, start + load.warmup + load.duration)
        tally.first = window[0]

        async def client_loop() -> None:
            while True:
                due = time.perf_counter()
                if due >= window[1] or len(tally.latencies) + sum(tally.errors.values()) >= load.max_requests:
                    return
                await _post(client, body, tally, due, window)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return tally


async def open_loop(url: str, body: bytes, rate: float, load: ServeLoad) -> _Tally:
    """Requests due at Poisson arrival times of ``rate`` per second, sent whether or not the
    earlier ones were answered (up to MAX_IN_FLIGHT unanswered)."""
    tally = _Tally()
    arrivals = random.Random(load.seed)
    timed = min(load.max_requests, max(1, round(rate * load.duration * 3)))  # room for Poisson's spread
    async with _client(url, min(MAX_IN_FLIGHT, 512), load.timeout) as client:
        start = time.perf_counter()
        window = [start + load.warmup, start + load.warmup + load.duration]
        tally.first = window[0]
        tasks: set[asyncio.Task] = set()
        due, counted = start, 0
        while True:
            due += arrivals.expovariate(rate)
            if due >= window[1] or counted >= timed:
                window[1] = min(window[1], due)
                break
            if due >= window[0]:
                counted += 1
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if len(tasks) >= MAX_IN_FLIGHT:
                if due >= window[0]:
                    tally.errors["overload"] += 1
                continue
            task = asyncio.ensure_future(_post(client, body, tally, due, (window[0], float("inf"))))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    tally.last = window[1] if tally.last is None else max(tally.last, window[1])
    return tally


# --------------------------------------------------------------------------- the measurements


def _batch_counts(url: str) -> tuple[float, float] | None:
    """(samples, batches, model seconds) the server has run so far, from a dlscale server's /metrics."""
    try:
        status, text = _http("GET", url + "/metrics", timeout=10)
    except OSError:
        return None
    if status != 200:
        return None
    found = dict(re.findall(r"^dlscale_(batch_size_sum|batch_size_count|compute_seconds_sum) (\S+)$", text, re.M))
    if len(found) < 3:
        return None
    return float(found["batch_size_sum"]), float(found["batch_size_count"]), float(found["compute_seconds_sum"])


def _row(mode: str, load: ServeLoad, tally: _Tally, before: tuple | None, after: tuple | None, *,
         concurrency: int | None = None, rate: float | None = None, elapsed: float | None = None) -> dict[str, Any]:
    """One setting's figures; ``before``/``after``: the server's counts (``_batch_counts``)
    around it, and ``elapsed`` the setting's seconds, warm-up included as in those counts."""
    answered = len(tally.latencies)
    seconds = max((tally.last or tally.first or 0.0) - (tally.first or 0.0), 1e-9)
    ms = [1000.0 * t for t in tally.latencies]
    batches = after[1] - before[1] if before and after else 0  # warm-up included
    p99 = percentile(ms, 99) if ms else None
    errors = sum(tally.errors.values())
    return {
        "mode": mode,
        "concurrency": concurrency,
        "rate": rate,
        "requests": answered,
        "errors": errors,
        "error_reasons": dict(tally.errors),
        "seconds": seconds,
        "requests_per_second": answered / seconds,
        "predictions_per_second": answered * load.samples_per_request / seconds,
        "latency_p50_ms": percentile(ms, 50) if ms else None,
        "latency_p90_ms": percentile(ms, 90) if ms else None,
        "latency_p99_ms": p99,
        "latency_max_ms": max(ms) if ms else None,
        "mean_batch_size": (after[0] - before[0]) / batches if batches > 0 else None,
        # the share of the wall time the model computed: far below 1 at the peak, the HTTP side is the limit
        "model_busy": (after[2] - before[2]) / elapsed if before and after and elapsed else None,
        "within_p99_bound": p99 is not None and p99 <= load.p99_ms and errors == 0,
    }


def measure(
    url: str, body: bytes, load: ServeLoad, *, step: Callable[[str, float], None] | None = None,
) -> list[dict[str, Any]]:
    """The closed-loop sweep, then the open-loop rates (given, or fractions of the closed
    loop's peak requests/s, which then runs first): one row per setting."""
    def setting(label: str, mode: str, run: Any, **what: Any) -> dict[str, Any]:
        if step:
            step(label, load.warmup + load.duration)
        before, started = _batch_counts(url), time.perf_counter()
        tally = asyncio.run(run)
        elapsed = time.perf_counter() - started
        return _row(mode, load, tally, before, _batch_counts(url), elapsed=elapsed, **what)

    rows = [
        setting(f"closed loop: {c} concurrent clients", "closed", closed_loop(url, body, c, load), concurrency=c)
        for c in (load.concurrencies if "closed" in load.loops else ())
    ]
    if "open" not in load.loops:
        return rows
    rates = load.rates
    if rates is None:
        peak = max(r["requests_per_second"] for r in rows)
        rates = tuple(round(peak * f, 1) for f in RATE_FRACTIONS if peak * f >= 0.1)
    rows += [setting(f"open loop: {r:g} requests/s", "open", open_loop(url, body, r, load), rate=r) for r in rates]
    return rows


def best_rate_under_bound(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The open-loop row of the highest offered rate whose p99 stayed under the bound with no
    errors (MLPerf Server's figure of merit), or None when no rate did."""
    ok = [r for r in rows if r["mode"] == "open" and r["within_p99_bound"]]
    return max(ok, key=lambda r: r["rate"]) if ok else None


def run_bench_serve(
    load: ServeLoad, run_dir: Path, *, url: str | None = None, run: str | Path | None = None,
    server_flags: list[str] | None = None, input_shape: tuple[int, ...] | None = None,
    step: Callable[[str, float], None] | None = None, note: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Measure the server at ``url``, or a ``dlscale serve RUN`` started here with
    ``server_flags`` (stopped at the end), and write bench-serve.json in ``run_dir``."""
    from dlscale.bench.common import result_object, write_result
    from dlscale.bench.reliability import Interference

    load.check()
    interference = Interference.snapshot()  # a server started here shares the machine: its load is dlscale's own
    server = None
    if run is not None:
        server = LocalServer(run, server_flags or [])
        if note:
            note(f"starting dlscale serve {run} on {server.url}")
    try:
        if server is not None:
            server.wait_ready()
            url = server.url
        assert url is not None
        url = loopback_url(url)
        info = describe_server(url)
        body = request_body(info, input_shape, load.samples_per_request, load.seed)
        check_answer(url, body, load.samples_per_request)
        rows = measure(url, body, load, step=step)
    finally:
        if server is not None:
            server.stop()
    best = best_rate_under_bound(rows)
    peak = max([r for r in rows if r["mode"] == "closed"] or rows, key=lambda r: r["predictions_per_second"])
    result = result_object(
        rows, kind="serve", interference=interference, url=url, run=str(run) if run is not None else None, server=info or None,
        model=info.get("model"), samples_per_request=load.samples_per_request, duration_s=load.duration,
        warmup_s=load.warmup, max_requests=load.max_requests, p99_bound_ms=load.p99_ms,
        peak_predictions_per_second=peak["predictions_per_second"], peak_concurrency=peak["concurrency"], peak_rate=peak["rate"],
        max_rate_under_p99=best["rate"] if best else None,
        predictions_per_second_under_p99=best["predictions_per_second"] if best else None,
    )
    return result, write_result(run_dir, "serve", result)
