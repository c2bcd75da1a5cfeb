"""The forecast fitted to this machine's own benchmark results: ``bench comm`` gives the
intra-node link (its measured all-reduce bandwidth and latency), ``bench scaling`` the
single-worker speed and the per-step overhead that reproduces its measured efficiency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from dlscale.errors import UserError
from dlscale.forecast.networks import GB, Network
from dlscale.runs.results import read_bench_rows


def scaling_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `dlscale bench scaling` result (file or run directory), one per worker count."""
    return read_bench_rows(path, "scaling")


def network_from_comm(path: str | Path) -> Network:
    """This machine's link, as `bench comm` measured it: the all-reduce bus bandwidth at the
    largest size, and the per-step latency from the smallest size (t = 2(N-1) latencies)."""

    rows = [r for r in read_bench_rows(path, "comm") if r.get("op") == "all_reduce" and r.get("time_s")]
    if not rows or rows[0]["world_size"] < 2:
        raise UserError(f"{path} has no all_reduce rows over 2 or more ranks to calibrate from")
    largest = max(rows, key=lambda r: r["bytes"])
    smallest = min(rows, key=lambda r: r["bytes"])
    latency = smallest["time_s"] / (2 * (smallest["world_size"] - 1))
    return Network(
        name="measured", bandwidth=largest["busbw_gbps"] * GB, latency=latency, scope="intra",
        source=f"calibrated from {path}: all_reduce busbw {largest['busbw_gbps']:.3g} GB/s at "
               f"{largest['bytes']} bytes, latency {latency * 1e6:.3g} us from {smallest['bytes']} bytes",
    )


def speed_from_scaling(rows: list[dict[str, Any]], path: str | Path) -> tuple[float, str]:
    """(samples/s of one worker, where the figure comes from): the fewest-worker row of a
    `bench scaling` result, per worker."""
    one = min(rows, key=lambda r: r["workers"])
    single = one["samples_per_second"] / one["workers"]
    return single, f"measured: {single:,.1f} samples/s per worker by bench scaling ({path})"


def fit_overhead(measured: dict[str, Any], predict_at: Callable[[float], float]) -> float:
    """The per-step overhead (s) that makes the model's efficiency at the measured worker count
    equal the measured one (bisection; 0 when the model is already no better than measured)."""
    target = measured["efficiency"]
    low, high = 0.0, 10.0
    if predict_at(low) <= target:
        return 0.0
    for _ in range(60):
        middle = (low + high) / 2
        if predict_at(middle) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2
