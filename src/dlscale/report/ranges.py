"""The spread behind a figure measured more than once: (low, high) for error bars and tables.

A figure quoted from repeats is a median; the reader should see how far the repeats
were apart. Each source of spread a result may carry is read here, so tables and plots
agree: ``KEY_p10``/``KEY_p90`` (any key), the per-repeat step times of ``bench train``
(``step_times_s``, with ``batch_size`` for samples/s) and the per-repeat rates of
``bench data`` (``repeats`` as a list).
"""

from __future__ import annotations

import math
from typing import Any



def _numbers(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    out = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [v for v in out if math.isfinite(v)]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def value_range(row: dict[str, Any], key: str) -> tuple[float, float, str] | None:
    """(low, high, what the range is) of ``row[key]``'s repeats, or None when it has none."""
    low, high = _finite(row.get(f"{key}_p10")), _finite(row.get(f"{key}_p90"))
    if low is not None and high is not None:
        return min(low, high), max(low, high), "p10-p90"
    step_times = [t for t in _numbers(row.get("step_times_s")) if t > 0]
    if len(step_times) > 1:
        if key in ("step_time_median_s", "step_time_s"):
            return min(step_times), max(step_times), f"range of {len(step_times)} repeats"
        batch = _finite(row.get("batch_size"))
        if key == "samples_per_second" and batch:
            return batch / max(step_times), batch / min(step_times), f"range of {len(step_times)} repeats"
    rates = _numbers(row.get("repeats"))
    if key == "samples_per_second" and len(rates) > 1:
        return min(rates), max(rates), f"range of {len(rates)} repeats"
    return None


def folded_keys(rows: list[dict[str, Any]]) -> set[str]:
    """The keys a table leaves out because their spread shows inside another cell."""
    keys = {k for r in rows for k in r}
    folded = {"step_times_s"}
    if any(len(_numbers(r.get("step_times_s"))) > 1 for r in rows):
        folded.add("step_time_spread_s")  # shown as the range of step times
    if any(len(_numbers(r.get("repeats"))) > 1 for r in rows):
        folded.update(("spread", "repeats"))  # shown as the range of the repeated rates
    for key in keys:
        for suffix in ("_p10", "_p90"):
            if key.endswith(suffix) and key[: -len(suffix)] in keys:
                folded.add(key)
    return folded
