"""What a run says about itself: one header line when it starts, and summary.json when it
ends (``RunSummary``: the keys every run has, in ``runs.results.SUMMARY_KEYS``, first;
then what dlscale adds; null where a figure does not apply)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from dlscale.bench import reliability
from dlscale.bench.reliability import Interference
from dlscale.distributed import process_group as dist
from dlscale.hardware.device import describe, peak_memory_bytes
from dlscale.hardware.mfu import global_counts, utilisation
from dlscale.training.setup import Job
from dlscale.training.requeue import restart_count
from dlscale.training.state import TrainState
from dlscale.training.step import effective_lr
from dlscale.units import pfs_days


@dataclass(frozen=True)
class RunSummary:
    """summary.json, one field per key, in the file's order."""

    model: str
    data: str
    device: str
    precision: str
    world_size: int
    global_batch_size: int
    steps: int
    epochs: int
    wall_seconds: float
    train_seconds: float
    samples_per_second: float | None
    flops_per_sample: float | None
    total_flops: float | None
    achieved_flops_per_second: float | None
    peak_flops_per_second: float | None
    mfu: float | None
    pfs_days: float | None
    final_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    # beyond the keys every run has
    peak_source: str | None
    mfu_datasheet: float | None
    mfu_measured_peak: float | None
    measured_peak_flops_per_second: float | None
    warmup_seconds: float
    data_wait_fraction: float | None
    forward_flops_per_sample: float | None
    seq_len: int | None  # language models only
    tokens_per_second: float | None
    flops_per_token: float | None
    peak_memory_bytes: int | None
    energy_kwh: float | None  # GPU power readings (nvidia-ml-py); null when not sampled
    lr: float
    scale_lr: bool
    target_accuracy: float | None
    time_to_target_seconds: float | None
    time_to_target_step: int | None
    parameters: int
    channels_last: bool
    auto_settings: dict[str, Any] | None  # what the CPU probe measured when precision/channels_last were left open
    run_dir: str
    slurm_restart_count: int | None  # times SLURM requeued the job that finished the run; null outside SLURM
    # whether the figures can be trusted (bench.reliability): this session's load, steal and
    # the spread of its logged intervals' samples/s
    reliable: bool
    unreliable_reason: str | None
    load_average_before: float
    load_average_after: float | None
    steal_fraction: float | None
    samples_per_second_p10: float | None
    samples_per_second_p90: float | None
    samples_per_second_cv: float | None
    test_mae: float | None = None  # regression (float targets) only, as test_r2: 1 - SSE/SST
    test_r2: float | None = None
    stopped_early: bool = False  # --early-stop-patience ended the run before its last step
    best_step: int | None = None  # the step of the best validation of --monitor (null when nothing monitored)
    best_value: float | None = None
    monitor: str | None = None
    val_loss: float | None = None  # the last validation's (null without a validation set)
    val_accuracy: float | None = None
    loader_workers: int = 0  # loader processes per worker that decoded files (0: read in the training process)
    skipped_files: int | None = None  # unreadable image files passed over (--skip-bad-files), summed over workers; null for data that is not image files

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def summarize(
    job: Job, state: TrainState, test: dict[str, float | None], energy_kwh: float | None,
    outcome: dict[str, Any] | None = None, *, interference: Interference,
) -> RunSummary:
    """The summary of the whole run, every session of it; collective: every worker calls it.
    ``test`` is the Evaluator's test record (test_loss, test_accuracy or test_mae, test_r2, ...);
    ``interference`` the snapshot taken as this session's training loop began."""
    earlier, timer, device = state.earlier, state.timer, job.stepper.device
    # samples summed over all ranks, over the slowest rank's time (an all-reduce when distributed)
    timed_samples, timed_seconds = global_counts(
        timer.timed_samples + earlier.timed_samples, timer.timed_seconds + earlier.timed_seconds, device
    )
    data_seconds = timer.timed_data_seconds + earlier.timed_data_seconds
    warmup_seconds = timer.warmup_seconds + earlier.warmup_seconds
    train_seconds = warmup_seconds + timed_seconds
    samples_per_second = timed_samples / timed_seconds if timed_seconds > 0 else None
    if samples_per_second is None and train_seconds > 0:  # too few steps to leave warm-up out
        samples_per_second = state.step * job.order.global_batch / train_seconds
    flops_per_sample = job.flops.train_per_sample if job.flops else None
    total_flops = flops_per_sample * state.step * job.order.global_batch if flops_per_sample else None
    # devices used: every worker's GPU; for CPUs, every node's CPU (workers on one node share it)
    devices = dist.world_size() if device.type == "cuda" else job.config.nnodes
    usage = utilisation(flops_per_sample, samples_per_second, device, job.stepper.precision, devices, peak=job.peak)
    tokens = job.tokens_per_sample if job.splits.kind == "tokens" else None
    spread = reliability.spread_stats(timer.timed_rates)
    trust = reliability.fields(interference.after(), [spread], also=[reliability.above_peak([usage["mfu"]])])
    return RunSummary(
        model=job.model_name,
        data=job.splits.name,
        device=describe(device),
        precision=job.stepper.precision,
        world_size=dist.world_size(),
        global_batch_size=job.order.global_batch,
        steps=state.step,
        epochs=job.epochs,
        wall_seconds=state.wall_seconds(),
        train_seconds=train_seconds,
        samples_per_second=samples_per_second,
        flops_per_sample=flops_per_sample,
        total_flops=total_flops,
        achieved_flops_per_second=usage["achieved_flops_per_second"],
        peak_flops_per_second=usage["peak_flops_per_second"],
        mfu=usage["mfu"],
        pfs_days=pfs_days(total_flops) if total_flops else None,
        final_loss=None if math.isnan(state.last_loss) else state.last_loss,
        test_loss=test.get("test_loss"),
        test_accuracy=test.get("test_accuracy"),
        peak_source=usage["peak_source"],
        mfu_datasheet=usage["mfu_datasheet"],
        mfu_measured_peak=usage["mfu_measured_peak"],
        measured_peak_flops_per_second=usage["measured_peak_flops_per_second"],
        warmup_seconds=warmup_seconds,
        data_wait_fraction=data_seconds / timed_seconds if timed_seconds > 0 else None,
        forward_flops_per_sample=job.flops.forward_per_sample if job.flops else None,
        seq_len=tokens,
        tokens_per_second=samples_per_second * tokens if tokens and samples_per_second else None,
        flops_per_token=flops_per_sample / tokens if tokens and flops_per_sample else None,
        peak_memory_bytes=peak_memory_bytes(device),
        energy_kwh=energy_kwh,
        lr=effective_lr(job.config),
        scale_lr=job.config.scale_lr,
        target_accuracy=job.config.target_accuracy,
        time_to_target_seconds=state.time_to_target_seconds,
        time_to_target_step=state.time_to_target_step,
        parameters=job.parameters,
        channels_last=job.stepper.channels_last,
        auto_settings=job.tuned,
        run_dir=str(job.run_dir),
        slurm_restart_count=restart_count(),
        **trust,
        **reliability.spread_fields("samples_per_second", timer.timed_rates),
        test_mae=test.get("test_mae"),
        test_r2=test.get("test_r2"),
        loader_workers=job.feeds["train"].workers,
        skipped_files=skipped_files(job),
        **(outcome or {}),  # stopped_early, best_step, best_value, monitor, val_loss, val_accuracy (training/callbacks)
    )


def skipped_files(job: Job) -> int | None:
    """The unreadable files this job's feeds passed over, per worker, summed over workers
    (collective); None unless the data is image files."""
    feeds = [f for f in job.feeds.values() if f is not None]
    if not any(getattr(f.dataset, "keyed_by_epoch", False) for f in feeds):
        return None
    local = {str(f.dataset.files[i]) for f in feeds for i in f.skipped}
    count = torch.tensor(float(len(local)), device=job.stepper.device)
    return int(dist.sum_over_ranks(count).item())


def header(job: Job, start_step: int) -> str:
    """The line a run starts with: what trains on what, where, how long, and where it writes."""
    s = job.splits
    sizes = " / ".join(f"{len(d)} {n}" for n, d in (("train", s.train), ("val", s.val), ("test", s.test)) if d is not None)
    resumed = f", resuming at step {start_step}" if start_step else ""
    layout = " · channels_last" if job.stepper.channels_last else ""
    workers = job.feeds["train"].workers
    layout += f" · {workers} loader process{'es' if workers != 1 else ''}" if workers else ""
    line = (
        f"dlscale: {job.model_name} on {s.name} ({sizes}) · {describe(job.stepper.device)} · {job.stepper.precision}"
        f"{layout} · batch {job.order.global_batch} · {job.total_steps} steps{resumed} → {job.run_dir}"
    )
    if job.tuned and job.tuned["step_ms"]:
        timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in job.tuned["step_ms"].items())
        source = "cached measurement" if job.tuned["cached"] else "measured now, cached"
        line += f"\n         settings left on auto, fastest on this CPU ({source}): {timings}"
    return line
