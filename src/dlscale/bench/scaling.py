"""Scaling study: the training benchmark at each worker count, with speedup, efficiency and
where the time goes.

Definitions (weak scaling as Goyal et al. 2017 and Horovod report it; strong scaling as in Amdahl's law):
- weak scaling (default): fixed per-worker batch; efficiency = throughput(N) / (N x throughput(1)),
  speedup = throughput(N) / throughput(1);
- strong scaling: fixed global batch; speedup S(N) = T(1) / T(N) (step times), efficiency = S(N) / N.

Each worker count runs in its own set of workers (started like ``dlscale train --nproc``),
once per repeat, the counts interleaved (1, 2, 1, 2, ...: ``interleaved_schedule``) so that
a change in the machine's load falls on every count alike; each row holds the median of
its repeats and their spread, and speedup is the ratio of those medians.
Inside, every worker times two things on its own batch, with the device synchronised:
the full DDP step, and the same step with gradient synchronisation switched off
(``no_sync``): the pure compute. Their difference is the communication the backward pass
could not hide (exposed communication). One worker has no all-reduce to switch off: its
exposed communication is 0 and its step is compute + data wait (timing the same step
twice and subtracting would only report noise as communication). The batch is synthetic
and already on the device, so data wait is measured around fetching it and is near zero
by construction; real-data loading is measured by ``dlscale train`` (``data_wait_fraction``).

Efficiency above 100% (superlinear) is possible and flagged, never hidden: a worker's
share may run faster per sample than one worker's whole (it fits a cache better; on a
CPU, fewer threads per process synchronise less), or it is noise within the repeats.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dlscale.distributed import process_group as dist
from dlscale.bench.reliability import spread_fields
from dlscale.bench.train import Setting, Workload, stepper_for
from dlscale.hardware.device import synchronize
from dlscale.hardware.mfu import global_counts
from dlscale.training.allocator import keep_freed_memory
from dlscale.training.step import train_step


def _timed_steps(stepper, batch, device, steps: int, sync: bool) -> tuple[float, float]:
    """(seconds per step, seconds per step spent fetching the batch), slowest worker's."""
    x, y = batch
    fetch = 0.0
    synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        xb, yb = x, y  # the synthetic batch is already on the device: fetching costs nothing
        fetch += time.perf_counter() - t
        if sync:
            train_step(stepper, xb, yb)
        else:
            with stepper.sync_gradients(False):
                train_step(stepper, xb, yb)
    synchronize(device)
    seconds = time.perf_counter() - start
    _, slowest = global_counts(0, seconds, device)
    _, slowest_fetch = global_counts(0, fetch, device)
    return slowest / steps, slowest_fetch / steps


def interleaved_schedule(counts: list[int], repeats: int) -> list[int]:
    """The worker counts in launch order: every count's repeat r before any count's repeat
    r + 1 (1, 2, 1, 2, ...), so slow drift of the machine (other jobs, heat) is shared by
    every count instead of landing on whichever count ran last."""
    return [n for _ in range(repeats) for n in counts]


def measure_workers(workload: Workload, setting: Setting, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """One repeat at this worker count, run inside each worker; every worker returns the same row."""
    stepper = stepper_for(workload, setting, device)
    batch = workload.batch(setting.batch_size, device)
    workers = dist.world_size()
    with keep_freed_memory(device.type == "cpu"):  # as training runs it: see dlscale.training.allocator
        for _ in range(warmup):
            train_step(stepper, *batch)
        step_s, fetch_s = _timed_steps(stepper, batch, device, steps, sync=True)
        # one worker has no all-reduce: the step without it is the same step, not a second measurement
        no_sync_s = _timed_steps(stepper, batch, device, steps, sync=False)[0] if workers > 1 else step_s
    return {
        "workers": workers,
        "per_worker_batch": setting.batch_size,
        "global_batch": setting.batch_size * workers,
        "step_time_s": step_s,
        "comm_exposed_s": max(0.0, step_s - no_sync_s),
        "data_wait_s": fetch_s,
    }


def combine_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One worker count's row from its repeats (rows of measure_workers): medians, the
    spread over repeats (p10, p90, CV), and a step split so compute + comm + data = step."""
    first = repeats[0]
    step_times = [r["step_time_s"] for r in repeats]
    step_s = statistics.median(step_times)
    comm_s = statistics.median(r["comm_exposed_s"] for r in repeats)
    data_s = statistics.median(r["data_wait_s"] for r in repeats)
    return {
        "workers": first["workers"],
        "per_worker_batch": first["per_worker_batch"],
        "global_batch": first["global_batch"],
        "repeats": len(repeats),
        "step_time_s": step_s,
        "step_time_spread_s": max(step_times) - min(step_times),
        "step_times_s": step_times,
        **spread_fields("step_time_s", step_times),
        "samples_per_second": first["global_batch"] / step_s,
        **spread_fields("samples_per_second", [first["global_batch"] / t for t in step_times]),
        "compute_s": max(0.0, step_s - comm_s - data_s),
        "comm_exposed_s": comm_s,
        "data_wait_s": data_s,
    }


def add_speedup(rows: list[dict[str, Any]], strong: bool) -> list[dict[str, Any]]:
    """Speedup and efficiency of every row against the one-worker row (the smallest count),
    from the rows' medians; a row above 100% efficiency is flagged ``superlinear`` with a
    ``note`` saying whether the repeats' spread explains it."""
    base = min(rows, key=lambda r: r["workers"])
    for row in rows:
        n = row["workers"] / base["workers"]
        if strong:
            row["speedup"] = base["step_time_s"] / row["step_time_s"]
            row["efficiency"] = row["speedup"] / n
        else:
            row["speedup"] = row["samples_per_second"] / base["samples_per_second"]
            row["efficiency"] = row["samples_per_second"] / (n * base["samples_per_second"])
        row["superlinear"] = row["efficiency"] > 1.0
        row["note"] = superlinear_note(row, base) if row["superlinear"] else None
    return rows


def superlinear_note(row: dict[str, Any], base: dict[str, Any]) -> str:
    """Why efficiency can exceed 100%, and which reason the spread of the repeats points to.
    Strong or weak, efficiency is throughput(N) / (N/N0 x throughput(N0)), so the slowest
    repeat of N against the fastest of N0 bounds it from below."""
    n = row["workers"] / base["workers"]
    low, high = row.get("samples_per_second_p10"), base.get("samples_per_second_p90")
    head = f"efficiency above 100% at {row['workers']} workers: {100 * row['efficiency']:.0f}%"
    faster = ("each worker's share runs faster per sample than one worker's whole (a smaller working set fits a "
              "cache better; on a CPU, fewer threads per process synchronise less)")
    if low is None or not high:
        return f"{head}: either {faster}, or noise"
    if low / (n * high) <= 1.0:
        return f"{head}, within the spread of the repeats: likely noise; rerun on a quiet machine or with more --repeats"
    return f"{head}, beyond the spread of the repeats: {faster}"
