"""The trainer: build everything once, then one loop that reads as a list of events.

Each component decides its own timing: the logger which steps are sync points, the
checkpointer when a save is due, the evaluator when to validate. The loop only asks
them, in order, after every step; a stop signal is answered after the step it came in.
At each epoch's end the callbacks (``training/callbacks``) decide on the validation's
record: early stopping, the best checkpoint, the learning rate on a plateau, the user's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.data import Splits
from dlscale.data.batches import train_batches
from dlscale.distributed import process_group as dist
from dlscale.distributed.env import ClusterEnv
from dlscale.errors import Stopped, signal_name
from dlscale.hardware.energy import PowerSampler
from dlscale.hardware.report import hw_report
from dlscale.progress import TrainProgress
from dlscale.runs import checkpoint
from dlscale.runs import results
from dlscale.runs.tensorboard import TensorBoardLog
from dlscale.training.allocator import keep_freed_memory
from dlscale.training.callbacks import CallbackList
from dlscale.training.checkpointer import Checkpointer
from dlscale.training.config import TrainConfig
from dlscale.training.evaluate import Evaluator
from dlscale.training.interval_log import IntervalLogger
from dlscale.training.model_files import save_final_weights
from dlscale.training.setup import setup
from dlscale.training.signals import StopRequests
from dlscale.training.state import EarlierSessions, TrainState
from dlscale.training.step import train_step
from dlscale.bench import reliability
from dlscale.bench.reliability import Interference
from dlscale.training.summary import header, summarize
from dlscale.training.timing import StepTimer


@dataclass
class TrainResult:
    """What ``train()`` gives back, from a worker or a launcher alike."""

    summary: dict[str, Any]  # the same dict as summary.json
    run_dir: Path
    model: torch.nn.Module | None  # None from a launcher: the model lived in its workers


class Trainer:
    """One worker's share of a run: ``Trainer(...)`` sets it up (fresh or from the newest
    checkpoint), ``fit()`` trains, tests and writes summary.json."""

    def __init__(
        self, config: TrainConfig, overrides: dict[str, Any], env: ClusterEnv, device: torch.device,
        model: torch.nn.Module | None, data: Splits | None, progress: TrainProgress, callbacks: list[Any] | None = None,
    ) -> None:
        wall_start = time.perf_counter()
        if not dist.is_main():
            progress = TrainProgress(progress.console, enabled=False)  # rank 0 speaks for the job
        self.job, resume_from = setup(config, overrides, env, device, model, data)
        self.progress = progress
        # with several workers a frozen or dead peer ends the job after --timeout, never a hang
        self.watchdog = dist.Watchdog(self.job.config.timeout)
        self.checkpointer = Checkpointer(self.job, pet=self.watchdog.pet)
        self.evaluator = Evaluator(self.job, progress, pet=self.watchdog.pet)
        start_step, earlier = self.checkpointer.restore(resume_from) if resume_from else (0, EarlierSessions())
        # rank 0 drops the lines logged after the checkpoint; a corrupt file stops every worker
        dist.on_main(lambda: self.job.metrics.truncate_after(start_step))
        # the first steps compile and allocate: timed apart, never averaged in
        first_timed = start_step + min(5 if self.job.config.compile else 2, (self.job.total_steps - start_step) // 2)
        self.logger = IntervalLogger(self.job, progress, first_timed)
        self.state = TrainState.begin(start_step, earlier, StepTimer(self.job.stepper.device, first_timed), wall_start)
        # early stopping, --keep-best, plateau and the user's callbacks, their counters restored from the checkpoint
        self.callbacks = CallbackList(self.job, self.state, self.checkpointer, callbacks)
        if self.job.config.logger == "tensorboard" and dist.is_main():  # rank 0 mirrors metrics.jsonl
            self.job.metrics.mirror = TensorBoardLog(self.job.run_dir, purge_step=start_step + 1 if start_step else None)

    def fit(self) -> TrainResult:
        job, state, progress = self.job, self.state, self.progress
        device = job.stepper.device
        progress.print(header(job, state.step))
        progress.start(job.total_steps, state.step)
        state.timer.restart(state.step, state.samples)
        interference = Interference.snapshot()  # the load before the loop: setup and restoring are not training
        power = PowerSampler(device.index or 0) if device.type == "cuda" else contextlib.nullcontext()
        stop: int | None = None  # the signal every worker agreed to stop on (SIGTERM, SIGINT, SIGUSR1)
        self.watchdog.pet()  # its clock starts with the loop: setup and restoring are not steps
        with self.watchdog, power, StopRequests() as requests, contextlib.ExitStack() as cleanup:
            cleanup.callback(progress.stop)
            for feed in job.feeds.values():  # the loader processes end with the loop, not at exit
                if feed is not None:
                    cleanup.callback(feed.close)
            cleanup.enter_context(keep_freed_memory(device.type == "cpu"))  # no page faults for reused buffers
            if job.metrics.mirror is not None:
                cleanup.callback(job.metrics.mirror.close)
            self.callbacks.on_train_start()
            while state.step < job.total_steps and stop is None and not self.callbacks.should_stop:
                epoch, first = divmod(state.step, job.order.steps_per_epoch)
                epoch_losses: list[torch.Tensor] = []
                batches = train_batches(job.feeds["train"], job.order, epoch, first)
                for x, y in state.timer.waiting_for(batches):
                    epoch_losses.append(self._train_step(x, y, epoch))
                    self.callbacks.on_step_end(epoch, epoch_losses[-1])
                    save_now = self.checkpointer.should_save(state.step)
                    if save_now or self.logger.should_log(state.step):
                        self.logger.log(state)  # a sync point; a save closes the timing interval too
                    if save_now:
                        self.checkpointer.save(state)
                        state.timer.restart(state.step, state.samples)
                    requests.drill(state.step)  # DLSCALE_DRILL_SIGTERM_AT_STEP: a rehearsed preemption
                    stop = requests.agreed()  # a signal: finish this step, save, stop (all workers at one step)
                    if state.step == job.total_steps or stop is not None or self.callbacks.should_stop:
                        break
                if stop is None:
                    self._end_epoch(epoch, epoch_losses)  # validation, then early stopping, keep-best, plateau
            progress.stop()
            if stop is not None and state.step < job.total_steps:
                self._save_and_stop(stop)
            if state.window:  # a callback stopped the run between two metrics lines
                self.logger.log(state)
            self.checkpointer.save(state)
            self.callbacks.restore_best()  # --keep-best: the test (and the exported model) use the best weights
            test = self.evaluator.test()  # test_loss and test_<metric>
            save_final_weights(job.run_dir, job.stepper.raw_model)  # model.safetensors, beside model.json
        summary = self._write_summary(power, test, interference)
        progress.summary_table(summary, str(job.run_dir))
        if summary["skipped_files"]:
            progress.print(f"warning: {summary['skipped_files']} unreadable image files were skipped (--skip-bad-files) "
                           "and other samples read in their place; remove or replace them")
        if reliability.warning(summary):
            progress.print(reliability.warning(summary))
        self.callbacks.on_train_end(summary)
        return TrainResult(summary=summary, run_dir=job.run_dir, model=job.stepper.raw_model)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        """One optimizer step; its loss stays on the device until the next sync point."""
        job, state = self.job, self.state
        loss = train_step(job.stepper, x, y)
        self.watchdog.pet()
        state.step, state.samples = state.step + 1, state.samples + job.order.local_batch  # this worker's samples
        state.window.append(loss)
        self.progress.advance(epoch, job.epochs)
        return loss

    def _end_epoch(self, epoch: int, epoch_losses: list[torch.Tensor]) -> None:
        """Validate when due, then the callbacks decide on its record (stop, save the best, lower the lr)."""
        state = self.state
        record = None
        if self.evaluator.should_validate(state.step):
            record = self.evaluator.validate(state, epoch, epoch_losses)
        self.callbacks.on_epoch_end(epoch, record, epoch_losses)
        if record is not None:
            state.timer.restart(state.step, state.samples)

    def _write_summary(self, power: Any, test: dict[str, float | None], interference: Interference) -> dict[str, Any]:
        """summary.json of the whole run (every worker's energy, every session's time); rank 0
        writes it, and no worker (nor its node's launcher) ends before it exists."""
        job = self.job
        energy_kwh = _energy_kwh(power, job.stepper.device, self.state.earlier.energy_kwh)
        summary = results.stamp("summary", summarize(
            job, self.state, test, energy_kwh, self.callbacks.summary_fields(), interference=interference).to_dict())
        if dist.is_main():
            results.write_hardware(job.run_dir, hw_report(measured=job.machine_peaks))  # the peaks MFU used
            results.write_summary(job.run_dir, summary)
        dist.barrier()
        return summary

    def _save_and_stop(self, signum: int) -> None:
        """Log the steps since the last metrics line, save, and stop: ``Stopped`` says how to resume."""
        job, state = self.job, self.state
        if state.window:
            self.logger.log(state)
        self.checkpointer.save(state)
        raise Stopped(
            f"stopped by {signal_name(signum)} after step {state.step} of {job.total_steps}: checkpoint saved in "
            f"{checkpoint.checkpoints_dir(job.run_dir) / f'step-{state.step}'}; continue with: "
            f"dlscale train --resume {job.run_dir}",
            signum,
        )


def _energy_kwh(power: Any, device: torch.device, earlier_kwh: float | None) -> float | None:
    """kWh of all workers' GPUs, from their power readings; None unless every worker had them."""
    local = getattr(power, "kwh", None)
    total = dist.sum_over_ranks(torch.tensor([local or 0.0, float(local is None)], dtype=torch.float64, device=device))
    if total[1] > 0:
        return None
    return float(total[0]) + (earlier_kwh or 0.0)
