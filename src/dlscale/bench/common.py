"""What every benchmark shares: its run directory, the result file with provenance,
and the statistics (median and spread, latency percentiles) quoted from repeats."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from dlscale.runs import directory as runs
from dlscale.hardware.provenance import provenance


def bench_run_dir(kind: str, model: str, requested: str | None) -> Path:
    """``--run-dir`` or runs/<UTC-time>-bench-<kind>-<model>/: checked now (before any work),
    created by ``write_result`` once there is a result, so a failed benchmark leaves nothing."""
    path = Path(requested) if requested else runs.default_run_dir(f"bench-{kind}", model)
    runs.check_new_run_dir(path)
    return path


def result_object(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The bench JSON object: provenance, the rows, and the first row's keys repeated at the
    top level so a single-setting benchmark reads flat."""
    flat = dict(rows[0]) if rows else {}
    return {**flat, **extra, "provenance": provenance(), "results": rows}


def write_result(run_dir: Path, kind: str, result: dict[str, Any]) -> Path:
    if not run_dir.is_dir():
        runs.create_run_dir(run_dir)
    path = run_dir / f"bench-{kind}.json"
    runs.write_json(path, result)
    return path


def median_spread(values: list[float]) -> tuple[float, float]:
    """Median and spread (max - min) of repeated measurements."""
    return statistics.median(values), max(values) - min(values)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
