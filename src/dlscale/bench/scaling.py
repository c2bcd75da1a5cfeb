"""Scaling study: the training benchmark at each worker count, with speedup, efficiency and
where the time goes.

Definitions (weak scaling as Goyal et al. 2017 and Horovod report it; strong scaling as in Amdahl's law):
- weak scaling (default): fixed per-worker batch; efficiency = throughput(N) / (N x throughput(1)),
  speedup = throughput(N) / throughput(1);
- strong scaling: fixed global batch; speedup S(N) = T(1) / T(N) (step times), efficiency = S(N) / N.

Each worker count runs in its own set of workers (started like ``dlscale train --nproc``).
Inside, every worker times two things on its own batch, with the device synchronised:
the full DDP step, and the same step with gradient synchronisation switched off
(``no_sync``): the pure compute. Their difference is the communication the backward pass
could not hide (exposed communication). The batch is synthetic and already on the
device, so data wait is measured around fetching it and is near zero by construction;
real-data loading is measured by ``dlscale train`` (``data_wait_fraction``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dlscale.distributed import process_group as dist
from dlscale.bench.train import Setting, Workload, stepper_for
from dlscale.hardware.device import synchronize
from dlscale.hardware.mfu import global_counts
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


def measure_workers(
    workload: Workload, setting: Setting, device: torch.device, steps: int, warmup: int, repeats: int
) -> dict[str, Any]:
    """Run inside each worker of one worker count; every worker returns the same row."""
    stepper = stepper_for(workload, setting, device)
    batch = workload.batch(setting.batch_size, device)
    for _ in range(warmup):
        train_step(stepper, *batch)
    step_times, compute_times, fetch_times = [], [], []
    for _ in range(repeats):
        step, fetch = _timed_steps(stepper, batch, device, steps, sync=True)
        compute, _ = _timed_steps(stepper, batch, device, steps, sync=False)
        step_times.append(step)
        compute_times.append(compute)
        fetch_times.append(fetch)
    workers = dist.world_size()
    step_s = statistics.median(step_times)
    compute_s = statistics.median(compute_times)
    return {
        "workers": workers,
        "per_worker_batch": setting.batch_size,
        "global_batch": setting.batch_size * workers,
        "step_time_s": step_s,
        "step_time_spread_s": max(step_times) - min(step_times),
        "samples_per_second": setting.batch_size * workers / step_s,
        "compute_s": compute_s,
        "comm_exposed_s": max(0.0, step_s - compute_s),
        "data_wait_s": statistics.median(fetch_times),
    }


def add_speedup(rows: list[dict[str, Any]], strong: bool) -> list[dict[str, Any]]:
    """Speedup and efficiency of every row against the one-worker row (the smallest count)."""
    base = min(rows, key=lambda r: r["workers"])
    for row in rows:
        n = row["workers"] / base["workers"]
        if strong:
            row["speedup"] = base["step_time_s"] / row["step_time_s"]
            row["efficiency"] = row["speedup"] / n
        else:
            row["speedup"] = row["samples_per_second"] / base["samples_per_second"]
            row["efficiency"] = row["samples_per_second"] / (n * base["samples_per_second"])
    return rows
