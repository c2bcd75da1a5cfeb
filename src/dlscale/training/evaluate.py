"""Loss and metrics on held-out data: the validation set after every epoch, the test set
once at the end. Classifiers report accuracy; regression (float targets) reports MAE, MSE
and R², all from sums that are all-reduced, so that several workers give exactly the
figures of one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from dlscale.data.batches import eval_batches, first_samples
from dlscale.data.loader import Feed
from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.hardware.device import autocast
from dlscale.progress import TrainProgress
from dlscale.training.state import TrainState
from dlscale.training.step import Stepper, to_device

if TYPE_CHECKING:  # setup imports metric_names from here
    from dlscale.training.setup import Job

METRIC_TARGETS = {"accuracy": "classes", "mae": "values", "mse": "values", "r2": "values"}  # what each fits
DEFAULT_METRICS = {"classes": ("accuracy",), "values": ("mae", "r2")}


def metric_names(targets: str, metrics: str = "auto") -> list[str]:
    """The metrics a run of ``targets`` reports: the comma-separated ``metrics``, or the
    default for ``auto``; UserError when one does not fit the targets."""
    if metrics == "auto":
        return list(DEFAULT_METRICS[targets])
    names = list(dict.fromkeys(name.strip() for name in metrics.split(",")))
    for name in names:
        if name not in METRIC_TARGETS:
            raise UserError(f"unknown metric {name!r}; choose from {', '.join(METRIC_TARGETS)}")
        if METRIC_TARGETS[name] != targets:
            what = "integer class labels" if targets == "classes" else "float regression targets"
            fitting = ", ".join(n for n, t in METRIC_TARGETS.items() if t == targets)
            raise UserError(f"metric {name} does not fit data holding {what}; use {fitting}")
    return names


class Evaluator:
    """Validates at the end of every epoch (when the data has a validation set) and tests at
    the end; ``pet`` tells the watchdog each batch is progress."""

    def __init__(self, job: Job, progress: TrainProgress, pet: Callable[[], None]) -> None:
        self.job = job
        self.progress = progress
        self.pet = pet
        self.metrics = metric_names(job.splits.targets, job.config.metrics)

    def should_validate(self, step: int) -> bool:
        job = self.job
        return job.config.eval_every_epoch and job.splits.val is not None and job.ends_epoch(step)

    def validate(self, state: TrainState, epoch: int, epoch_losses: list[torch.Tensor]) -> dict[str, Any]:
        """One ``val`` line in metrics.jsonl (val_loss and val_<metric>, e.g. val_accuracy, or
        val_mae and val_r2 for regression); the first time validation reaches
        --target-accuracy, the loop time and step it took."""
        job = self.job
        train_loss = float(torch.stack(epoch_losses).float().mean()) if epoch_losses else None
        record = {"kind": "val", "step": state.step, "epoch": epoch, "train_loss": train_loss,
                  **self._evaluate(job.feeds["val"], "val")}
        target, val_accuracy = job.config.target_accuracy, record.get("val_accuracy")
        if target is not None and state.time_to_target_seconds is None and val_accuracy is not None and val_accuracy >= target:
            state.time_to_target_seconds = state.loop_seconds()
            state.time_to_target_step = state.step
            record["reached_target"] = target
        if dist.is_main():
            job.metrics.write(record)
        self.progress.epoch_line(record, job.epochs)
        return record  # the loop's callbacks decide on it (training/callbacks)

    def test(self) -> dict[str, float | None]:
        """test_loss and test_<metric> (None without a test set)."""
        return self._evaluate(self.job.feeds["test"], "test")

    def _evaluate(self, feed: Feed | None, prefix: str) -> dict[str, float | None]:
        job = self.job
        found = evaluate(job.stepper, feed, job.order.local_batch, self.pet, job.splits.targets)
        return {f"{prefix}_{name}": None if found is None else found[name] for name in ("loss", *self.metrics)}


@torch.inference_mode()
def evaluate(
    s: Stepper, feed: Feed | None, batch: int, pet: Callable[[], None], targets: str = "classes"
) -> dict[str, float | None] | None:
    """Mean loss over every sample (every token, for language models), with accuracy for
    ``targets="classes"``, or mae, mse and r2 for ``"values"``; None without data.

    Each worker takes its contiguous share, so every sample counts exactly once (no
    padding duplicates); the sums are all-reduced. Under FSDP every forward is a
    collective, so a worker whose share ran out keeps stepping on a zero-weight batch
    until the longest share is done."""
    if feed is None or len(feed.dataset) == 0:
        return None
    dataset = feed.dataset
    world, rank = dist.world_size(), dist.rank()
    sharded = s.parallel is not s.raw_model and not hasattr(s.parallel, "no_sync")  # FSDP2
    module = s.parallel if sharded else s.raw_model  # eager: a compiled model would recompile for eval
    module.eval()
    longest = max(-(-(len(dataset) * (r + 1) // world - len(dataset) * r // world) // batch) for r in range(world))
    sums = None  # float64 sums, their layout set by _batch_sums
    batches = eval_batches(feed, batch, rank=rank, world=world)
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
            output = module(x)
        pet()
        found = weight * _batch_sums(s, output, y, targets)
        sums = found if sums is None else sums + found
    module.train()
    return _metrics(dist.sum_over_ranks(sums), targets)


def _batch_sums(s: Stepper, output: torch.Tensor, y: torch.Tensor, targets: str) -> torch.Tensor:
    """One batch's sums, float64: classes [loss, correct, count]; values [loss, count, then
    per output column: |error|, error², y, y²] (count: target values for the loss, samples for the columns)."""
    if targets == "classes":
        flat, target = output.reshape(-1, output.shape[-1]).float(), y.reshape(-1)
        return torch.stack([
            torch.nn.functional.cross_entropy(flat, target, reduction="sum").double(),
            (flat.argmax(-1) == target).sum().double(),
            torch.tensor(float(target.numel()), device=s.device, dtype=torch.float64),
        ])
    loss_sum = s.loss(output, y, reduction="sum").double()  # checks that output and y have matching shapes
    out, want = output.reshape(len(output), -1).double(), y.reshape(len(y), -1).double()
    error = out - want
    head = torch.stack([loss_sum, torch.tensor(float(want.numel()), device=s.device, dtype=torch.float64)])
    return torch.cat([head, error.abs().sum(0), (error**2).sum(0), want.sum(0), (want**2).sum(0)])


def _metrics(sums: torch.Tensor, targets: str) -> dict[str, float | None]:
    if targets == "classes":
        loss_sum, correct, count = sums.tolist()
        return {"loss": loss_sum / count, "accuracy": correct / count}
    loss_sum, values = sums[0].item(), sums[1].item()
    abs_err, sq_err, y_sum, y2_sum = sums[2:].reshape(4, -1)
    samples = values / len(abs_err)
    # R² = 1 - SSE/SST for each output column (SST: spread of y around its mean), averaged over
    # the columns as scikit-learn's r2_score does; None when a column's targets are all equal.
    sst = y2_sum - y_sum**2 / samples
    r2 = None if bool((sst <= 1e-12 * y2_sum).any()) else float((1 - sq_err / sst).mean())
    return {"loss": loss_sum / values, "mae": float(abs_err.sum()) / values, "mse": float(sq_err.sum()) / values, "r2": r2}
