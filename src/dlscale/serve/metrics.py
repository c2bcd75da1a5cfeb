"""The server's counters and histograms in the Prometheus text format (version 0.0.4),
written by hand: a few dozen lines instead of a dependency."""

from __future__ import annotations

import threading
from collections import defaultdict

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are exposed."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]
        return out


class Metrics:
    """Requests by endpoint and status, errors, and the batcher's batch sizes, queue waits and
    compute times. Thread-safe: the batcher's worker thread records into it too."""

    def __init__(self, prefix: str = "dlscale"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors = 0
        self.batch_size = Histogram(f"{prefix}_batch_size", "Samples per model batch.", BATCH_BUCKETS)
        self.queue_seconds = Histogram(f"{prefix}_queue_seconds", "Time a request waited for its batch to start.", SECONDS_BUCKETS)
        self.compute_seconds = Histogram(f"{prefix}_compute_seconds", "Time the model took per batch.", SECONDS_BUCKETS)

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, int(status))] += 1
            if status >= 400:
                self.errors += 1

    def batch(self, size: int, queue_waits: list[float], compute: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            for wait in queue_waits:
                self.queue_seconds.observe(wait)
            self.compute_seconds.observe(compute)

    def text(self) -> str:
        p = self.prefix
        with self._lock:
            lines = [f"# HELP {p}_requests_total HTTP requests answered.", f"# TYPE {p}_requests_total counter"]
            lines += [
                f'{p}_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}'
                for (endpoint, status), n in sorted(self.requests.items())
            ]
            lines += [f"# HELP {p}_errors_total Requests answered with a 4xx or 5xx status.", f"# TYPE {p}_errors_total counter"]
            lines.append(f"{p}_errors_total {self.errors}")
            for histogram in (self.batch_size, self.queue_seconds, self.compute_seconds):
                lines += histogram.lines()
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
