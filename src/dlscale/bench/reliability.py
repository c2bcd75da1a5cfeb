"""Whether a measured figure can be trusted. On a shared machine figures are sometimes
nonsense (one bench infer setting swung from 14 to 4,919 predictions/s between runs), so
every bench and training summary measures the interference around it (the 1-minute load
average before and after, the CPU time a hypervisor stole) and the spread of its repeats,
and says ``reliable: false`` with a one-sentence ``unreliable_reason`` instead of quoting
the figures as if they were sound.

The thresholds:

- ``CV_LIMIT`` 0.10: repeats of the same timed work on a quiet machine agree within a few
  per cent; a coefficient of variation above 10% means something else took the cores for
  part of the run, and the median cannot be told from its neighbours' (a 2x swing in
  either direction gives a CV far above it).
- load: the benchmark itself is one runnable process, so the other processes may keep at
  most ``usable cores - 1`` runnable (at least half a core, so the background noise of a
  lone core does not condemn every figure). Before the run the 1-minute average holds
  almost only the others; after it, dlscale's own share (its CPU time over the run, decayed
  the way the kernel averages it) is taken out before comparing.
- ``STEAL_LIMIT`` 0.05: a virtual machine whose hypervisor took more than 5% of the CPU
  time ran on a shared host, and its timings carry that.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dlscale.errors import UserError
from dlscale.hardware.inventory import usable_cores

CV_LIMIT = 0.10
STEAL_LIMIT = 0.05
OWN_PROCESSES = 1  # the benchmark (or training) process
MIN_LOAD_LIMIT = 0.5
LOAD_WINDOW_S = 60.0  # the kernel's 1-minute load average decays with this time constant
STABLE_WITHIN = 0.05  # --repeats auto: the last two medians within 5%
MIN_AUTO_REPEATS = 3
DEFAULT_BUDGET_S = 60.0


def cpu_times(stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot from the ``cpu`` line of /proc/stat;
    None where /proc does not show a steal column. guest and guest_nice are left out of the
    total: the kernel already counts them in user and nice."""
    try:
        with open(stat) as f:
            line = f.readline()
    except OSError:
        return None
    parts = line.split()
    if not parts or parts[0] != "cpu" or len(parts) < 9:
        return None
    ticks = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, its threads and its waited-for children (launched workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Interference:
    """The machine around one measurement: ``Interference.snapshot()`` before it, ``after()``
    once it is done (load average after it, and the steal share of CPU time between the two)."""

    load_average_before: float
    cpu_before: tuple[int, int] | None
    started: float
    own_cpu_before: float
    load_average_after: float | None = None
    steal_fraction: float | None = None
    own_load: float = 0.0  # dlscale's own expected share of load_average_after

    @classmethod
    def snapshot(cls) -> Interference:
        return cls(os.getloadavg()[0], cpu_times(), time.monotonic(), _own_cpu_seconds())

    def after(self) -> Interference:
        """Read the machine now; returns itself, so ``snapshot`` ... ``after()`` reads as one value."""
        self.load_average_after = os.getloadavg()[0]
        elapsed = max(time.monotonic() - self.started, 1e-9)
        own_cores = (_own_cpu_seconds() - self.own_cpu_before) / elapsed
        # a process runnable for ``elapsed`` s raises the 1-minute average by 1 - exp(-t/60) of itself
        self.own_load = own_cores * (1 - math.exp(-elapsed / LOAD_WINDOW_S))
        now = cpu_times()
        if self.cpu_before is not None and now is not None:
            total = now[1] - self.cpu_before[1]
            self.steal_fraction = (now[0] - self.cpu_before[0]) / total if total > 0 else 0.0
        return self


def spread_stats(values: Iterable[float]) -> dict[str, Any]:
    """Median, p10, p90 (linear between ranks, numpy's default) and coefficient of variation
    (sample stdev / mean; None under two values) of repeated measurements."""
    values = list(values)
    n = len(values)
    if n == 0:
        return {"n": 0, "median": None, "p10": None, "p90": None, "cv": None}
    if n == 1:
        return {"n": 1, "median": values[0], "p10": values[0], "p90": values[0], "cv": None}
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    mean = statistics.fmean(values)
    cv = statistics.stdev(values) / mean if mean else None
    return {"n": n, "median": statistics.median(values), "p10": deciles[0], "p90": deciles[-1], "cv": cv}


def spread_fields(prefix: str, values: Iterable[float]) -> dict[str, Any]:
    """A row's spread keys for the figure ``prefix`` (``samples_per_second_p10``, ``_p90``, ``_cv``)."""
    stats = spread_stats(values)
    return {f"{prefix}_p10": stats["p10"], f"{prefix}_p90": stats["p90"], f"{prefix}_cv": stats["cv"]}


def load_limit(cores: int) -> float:
    """The load the other processes may make before the benchmark shares a core with them."""
    return max(cores - OWN_PROCESSES, MIN_LOAD_LIMIT)


def verdict(stats: dict[str, Any] | None, interference: Interference, cores: int) -> tuple[bool, str | None]:
    """(reliable, reason): unreliable when the load before or after the run left the benchmark
    less than a core of its own, the hypervisor stole more than 5% of the CPU time, or the
    repeats (``stats`` of spread_stats; None without repeats) vary by more than 10%."""
    limit = load_limit(cores)
    reasons, loads = [], []
    if interference.load_average_before > limit:
        loads.append(f"{interference.load_average_before:.1f} before")
    after = interference.load_average_after
    if after is not None and after - interference.own_load > limit:
        ours = f" ({after - interference.own_load:.1f} of it not dlscale's)" if interference.own_load >= 0.1 else ""
        loads.append(f"{after:.1f} after{ours}")
    if loads:
        reasons.append(f"load average {' and '.join(loads)} the run on {cores} core{'s' if cores != 1 else ''}, "
                       f"more than the {limit:g} left beside the benchmark")
    steal = interference.steal_fraction
    if steal is not None and steal > STEAL_LIMIT:
        reasons.append(f"the hypervisor stole {100 * steal:.0f}% of the CPU time (steal)")
    cv = stats.get("cv") if stats else None
    if cv is not None and cv > CV_LIMIT:
        reasons.append(f"repeats vary by {100 * cv:.0f}% (CV)")
    return not reasons, "; ".join(reasons) or None


def above_peak(utilisations: Iterable[float | None]) -> str | None:
    """The reason an MFU above 100% gives: the peak it was taken against bounds nothing here
    (a CPU without bf16 units emulates a bf16 GEMM slower than oneDNN runs bf16 convolutions)."""
    over = max((u for u in utilisations if u is not None), default=None)
    if over is None or over <= 1.0:
        return None
    return (f"MFU of {100 * over:.0f}% is above 100%: the peak it divides by is below what the run achieved, "
            "so it bounds nothing here")


def fields(interference: Interference, spreads: Iterable[dict[str, Any] | None] = (),
           also: Iterable[str | None] = ()) -> dict[str, Any]:
    """The top-level keys a result or summary carries: the verdict over its most scattered
    row (``spreads``: each row's spread_stats, or just its ``cv``), and the interference;
    ``also``: further reasons to distrust the figures (None where there is none)."""
    known = [s for s in spreads if s and s.get("cv") is not None]
    worst = max(known, key=lambda s: s["cv"], default=None)
    reliable, reason = verdict(worst, interference, usable_cores() or 1)
    more = [r for r in also if r]
    if more:
        reliable, reason = False, "; ".join([*([reason] if reason else []), *more])
    return {
        "reliable": reliable,
        "unreliable_reason": reason,
        "load_average_before": interference.load_average_before,
        "load_average_after": interference.load_average_after,
        "steal_fraction": interference.steal_fraction,
    }


def warning(result: dict[str, Any]) -> str | None:
    """The console line for an unreliable result or summary; None when it is reliable (or says nothing)."""
    if result.get("reliable") is False:
        return f"warning: figures unreliable: {result['unreliable_reason']}"
    return None


def overlap(a: dict[str, Any], b: dict[str, Any], prefix: str) -> bool:
    """Whether two rows' [p10, p90] ranges of ``prefix`` overlap, so the faster median may be luck."""
    low_a, high_a, low_b, high_b = (x.get(f"{prefix}_{q}") for x in (a, b) for q in ("p10", "p90"))
    if None in (low_a, high_a, low_b, high_b):
        return False
    return low_a <= high_b and low_b <= high_a


def repeat(measure_once: Callable[[], float], repeats: int | str, budget_s: float = DEFAULT_BUDGET_S) -> tuple[list[float], bool | None]:
    """``repeats`` values of ``measure_once``, or with ``"auto"`` as many as it takes for their
    median to settle (at least 3, the last two medians within 5%) within ``budget_s``:
    (values, stable). ``stable`` is None for a fixed count, False when the budget ran out first."""
    if repeats != "auto":
        return [measure_once() for _ in range(int(repeats))], None
    start, values = time.monotonic(), []
    while True:
        values.append(measure_once())
        if len(values) >= MIN_AUTO_REPEATS:
            previous, current = statistics.median(values[:-1]), statistics.median(values)
            if abs(current - previous) <= STABLE_WITHIN * abs(previous):
                return values, True
        if time.monotonic() - start >= budget_s:
            return values, False


def parse_repeats(text: str) -> int | str:
    """--repeats: a count of at least 1, or ``auto``; UserError otherwise."""
    if text == "auto":
        return text
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"--repeats must be a whole number of at least 1 or 'auto', got {text!r}")
    return int(text)
