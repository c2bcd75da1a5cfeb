"""The loop's sync points: between them the device runs ahead freely; at one, the timing
interval closes, the loss is checked and one ``train`` line goes to metrics.jsonl."""

from __future__ import annotations

import torch

from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.hardware.mfu import global_counts, utilisation
from dlscale.progress import TrainProgress
from dlscale.runs import checkpoint
from dlscale.training.setup import Job
from dlscale.training.state import TrainState


class TrainingDiverged(UserError):
    """The loss stopped being a finite number; the run stops and keeps its last good checkpoint."""


class IntervalLogger:
    """Says which steps are sync points and writes their metrics lines."""

    def __init__(self, job: Job, progress: TrainProgress, first_timed_step: int) -> None:
        self.job = job
        self.progress = progress
        self.every = job.config.log_every or max(1, min(100, job.total_steps // 50))  # about 50 lines a run
        self.first_timed_step = first_timed_step

    def should_log(self, step: int) -> bool:
        """Every --log-every steps, at the end of each epoch, and where warm-up ends (so its
        time stays out of the timed totals)."""
        return step % self.every == 0 or step == self.first_timed_step or self.job.ends_epoch(step)

    def log(self, state: TrainState) -> None:
        """Close the timing interval, check the loss, write one metrics line."""
        job, step = self.job, state.step
        seconds, lap_samples = state.timer.lap(step, state.samples)
        losses = dist.mean_over_ranks(torch.stack(state.window).float()).cpu()  # the global batch's loss
        first_step = step - len(state.window) + 1
        state.window.clear()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            raise TrainingDiverged(_divergence_message(job, first_step + int(bad[0, 0]), float(losses[bad[0, 0]])))
        lap_samples, seconds = global_counts(lap_samples, seconds, job.stepper.device)  # the whole job's rate
        rate = lap_samples / seconds if seconds > 0 else None
        record = {
            "kind": "train",
            "step": step,
            "epoch": (step - 1) // job.order.steps_per_epoch,
            "loss": float(losses.mean()),
            "lr": job.stepper.scheduler.get_last_lr()[0],
            "samples_per_second": rate,
            "step_time_s": seconds / len(losses) if len(losses) else None,
        }
        if job.tokens_per_sample > 1 and rate is not None:
            record["tokens_per_second"] = rate * job.tokens_per_sample
        if rate is not None and job.flops:  # this interval's MFU, against the peak summary.json uses
            devices = dist.world_size() if job.stepper.device.type == "cuda" else job.config.nnodes
            record["mfu"] = utilisation(job.flops.train_per_sample, rate, job.stepper.device, job.stepper.precision,
                                        devices, peak=job.peak)["mfu"]
        if dist.is_main():
            job.metrics.write(record)
        unit = "tok" if job.tokens_per_sample > 1 else "samples"
        shown_rate = rate * job.tokens_per_sample if rate is not None else None
        self.progress.interval(step, record["epoch"], job.epochs, record["loss"], shown_rate, unit)
        state.last_loss = float(losses[-1])


def _divergence_message(job: Job, step: int, value: float) -> str:
    newest = checkpoint.newest_checkpoint(job.run_dir)
    kept = f"the last good checkpoint is {newest}" if newest else "no checkpoint had been saved yet"
    return (
        f"loss became {value} at step {step}; training stopped and {kept}; "
        "lower --lr, add --grad-clip 1.0, or use --precision fp32"
    )
