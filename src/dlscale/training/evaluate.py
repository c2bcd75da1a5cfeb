"""Loss and accuracy on held-out data: the validation set after every epoch, the test set
once at the end."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from dlscale.data.batches import eval_batches, first_samples
from dlscale.distributed import process_group as dist
from dlscale.hardware.device import autocast
from dlscale.progress import TrainProgress
from dlscale.training.setup import Job
from dlscale.training.state import TrainState
from dlscale.training.step import Stepper, to_device


class Evaluator:
    """Validates at the end of every epoch (when the data has a validation set) and tests at
    the end; ``pet`` tells the watchdog each batch is progress."""

    def __init__(self, job: Job, progress: TrainProgress, pet: Callable[[], None]) -> None:
        self.job = job
        self.progress = progress
        self.pet = pet

    def should_validate(self, step: int) -> bool:
        job = self.job
        return job.config.eval_every_epoch and job.splits.val is not None and job.ends_epoch(step)

    def validate(self, state: TrainState, epoch: int, epoch_losses: list[torch.Tensor]) -> None:
        """One ``val`` line in metrics.jsonl; the first time validation reaches
        --target-accuracy, the loop time and step it took."""
        job = self.job
        val_loss, val_accuracy = self._evaluate(job.splits.val)
        train_loss = float(torch.stack(epoch_losses).float().mean()) if epoch_losses else None
        record = {"kind": "val", "step": state.step, "epoch": epoch, "train_loss": train_loss,
                  "val_loss": val_loss, "val_accuracy": val_accuracy}
        target = job.config.target_accuracy
        if target is not None and state.time_to_target_seconds is None and val_accuracy >= target:
            state.time_to_target_seconds = state.loop_seconds()
            state.time_to_target_step = state.step
            record["reached_target"] = target
        if dist.is_main():
            job.metrics.write(record)
        self.progress.epoch_line(record, job.epochs)

    def test(self) -> tuple[float | None, float | None]:
        return self._evaluate(self.job.splits.test)

    def _evaluate(self, dataset: Dataset | None) -> tuple[float | None, float | None]:
        job = self.job
        return evaluate(job.stepper, dataset, job.order.local_batch, job.config.workers, self.pet)


@torch.inference_mode()
def evaluate(
    s: Stepper, dataset: Dataset | None, batch: int, workers: int, pet: Callable[[], None]
) -> tuple[float | None, float | None]:
    """Mean loss and accuracy over every sample (every token, for language models).

    Each worker takes its contiguous share, so every sample counts exactly once (no
    padding duplicates); the sums are all-reduced. Under FSDP every forward is a
    collective, so a worker whose share ran out keeps stepping on a zero-weight batch
    until the longest share is done."""
    if dataset is None or len(dataset) == 0:
        return None, None
    world, rank = dist.world_size(), dist.rank()
    sharded = s.parallel is not s.raw_model and not hasattr(s.parallel, "no_sync")  # FSDP2
    module = s.parallel if sharded else s.raw_model  # eager: a compiled model would recompile for eval
    module.eval()
    longest = max(-(-(len(dataset) * (r + 1) // world - len(dataset) * r // world) // batch) for r in range(world))
    sums = torch.zeros(3, device=s.device, dtype=torch.float64)  # loss, correct, count
    batches = eval_batches(dataset, batch, rank=rank, world=world, workers=workers)
    first = None
    for _ in range(longest):
        x, y = next(batches, (None, None))
        weight = 1.0
        if x is None:  # this worker's share is done; keep FSDP's collectives in step
            x, y = first if first is not None else first_samples(dataset, 2)
            weight = 0.0
        first = first or (x, y)
        x, y = to_device(s, x), y.to(s.device, non_blocking=True)
        with autocast(s.device, s.precision):
            logits = module(x)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = y.reshape(-1)
        pet()
        sums += weight * torch.stack([
            torch.nn.functional.cross_entropy(flat, target, reduction="sum").double(),
            (flat.argmax(-1) == target).sum().double(),
            torch.tensor(float(target.numel()), device=s.device, dtype=torch.float64),
        ])
    module.train()
    loss_sum, correct, count = dist.sum_over_ranks(sums).tolist()
    return loss_sum / count, correct / count
