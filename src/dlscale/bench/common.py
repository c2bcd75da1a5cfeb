"""What every benchmark shares: its run directory, the result file with provenance,
and the statistics (median and spread, latency percentiles) quoted from repeats."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from dlscale.bench import reliability
from dlscale.bench.reliability import Interference
from dlscale.hardware.provenance import provenance
from dlscale.runs import results
from dlscale.runs.directory import check_new_run_dir, create_run_dir, default_run_dir


def bench_run_dir(kind: str, model: str, requested: str | None) -> Path:
    """``--run-dir`` or runs/<UTC-time>-bench-<kind>-<model>/: checked now (before any work),
    created by ``write_result`` once there is a result, so a failed benchmark leaves nothing."""
    path = Path(requested) if requested else default_run_dir(f"bench-{kind}", model)
    check_new_run_dir(path)
    return path


def result_object(
    rows: list[dict[str, Any]], *, kind: str, interference: Interference | None = None, spread: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The result object of a benchmark or a forecast (``kind``, see runs.results):
    provenance, the rows, and the first row's keys repeated at the top level so a
    single-setting benchmark reads flat. A benchmark passes the ``interference`` snapshot
    taken before it measured, and ``spread``, the figure whose ``<spread>_cv`` its rows
    carry: the result then says whether it is ``reliable`` (see bench.reliability)."""
    flat = dict(rows[0]) if rows else {}
    if interference is not None:
        cvs = [{"cv": row.get(f"{spread}_cv")} for row in rows] if spread else []
        over = reliability.above_peak(row.get(k) for row in rows for k in ("mfu", "mfu_measured_peak"))
        extra = {**reliability.fields(interference.after(), cvs, also=[over]), **extra}
    return results.stamp(kind, {**flat, **extra, "provenance": provenance(), "results": rows})


def write_result(run_dir: Path, kind: str, result: dict[str, Any]) -> Path:
    """bench-<kind>.json in ``run_dir``, which is created now: a failed benchmark leaves nothing."""
    if not run_dir.is_dir():
        create_run_dir(run_dir)
    return results.write_bench(run_dir, kind, result)


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
