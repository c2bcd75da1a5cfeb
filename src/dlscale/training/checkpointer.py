"""A training run's checkpoints: when one is due, what it holds, and putting it back.

The model and optimizer go through DCP (``runs.checkpoint``: sharded, reshardable, so a
run may resume on another number of workers); beside them each worker writes its own
plain state: schedule, gradient scaler, random streams, step and the carried totals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.runs import checkpoint
from dlscale.runs.safe_load import same_kind
from dlscale.training.setup import Job
from dlscale.training.state import EarlierSessions, TrainState, rng_state, set_rng_state
from dlscale.training.step import Stepper

BEST = "best"  # checkpoints/best: the best validated weights (--keep-best)


class Checkpointer:
    """Saves this job's checkpoints; ``pet`` tells the watchdog a long save is progress."""

    def __init__(self, job: Job, pet: Callable[[], None]) -> None:
        self.job = job
        self.every = job.config.checkpoint_every
        self.pet = pet

    def should_save(self, step: int) -> bool:
        """Every --checkpoint-every steps; the last step's checkpoint is the loop's own last event."""
        return bool(self.every) and step % self.every == 0 and step < self.job.total_steps

    def save(self, state: TrainState) -> None:
        """Model and optimizer through DCP (sharded, reshardable); each worker's own state beside it."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        job, s = self.job, self.job.stepper
        carried = state.carried()
        model_state, optimizer_state = get_state_dict(s.raw_model, s.optimizer)
        extra = {  # the keys every dlscale checkpoint has had: older runs resume with them
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler is not None else {},
            "rng": rng_state(),
            "step": state.step,
            "carried": carried,
        }
        meta = {"model": job.model_name, "data": job.splits.name, "strategy": job.config.strategy}
        self.pet()
        checkpoint.save(job.run_dir, state.step, {"model": model_state, "optimizer": optimizer_state}, extra, meta,
                        keep=job.config.keep_checkpoints)
        self.pet()

    def save_best(self, step: int) -> None:
        """--keep-best: the model's weights as ``checkpoints/best``, outside the rotation."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        job = self.job
        meta = {"model": job.model_name, "data": job.splits.name, "strategy": job.config.strategy, "best": True}
        self.pet()
        checkpoint.save(job.run_dir, step, {"model": get_model_state_dict(job.stepper.raw_model)}, {"step": step}, meta,
                        keep=job.config.keep_checkpoints, name=BEST)
        self.pet()

    def restore_best(self) -> None:
        """Put the weights of ``checkpoints/best`` back into the model (optimizer untouched)."""
        self.pet()
        checkpoint.load_model(checkpoint.checkpoints_dir(self.job.run_dir) / BEST, self.job.stepper.raw_model)
        self.pet()

    def restore(self, path: Path) -> tuple[int, EarlierSessions]:
        """Load a checkpoint saved by any number of workers into this job's workers; the step
        to continue from and the totals it carried."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        s = self.job.stepper
        model_state, optimizer_state = get_state_dict(s.raw_model, s.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        try:
            checkpoint.load_state(path, state)
            set_state_dict(s.raw_model, s.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(
                f"checkpoint {path} does not fit this model ({str(exc).splitlines()[0][:160]}); "
                "resume with the model and data the run was started with"
            ) from None
        extra = checkpoint.load_extra(path, dist.rank())
        saved_world = checkpoint.read_meta(path).get("world_size", 1)
        try:
            _check_extra(extra, s)
            s.scheduler.load_state_dict(extra["scheduler"])
            if s.scaler is not None and extra["scaler"]:
                s.scaler.load_state_dict(extra["scaler"])
            if saved_world == dist.world_size():  # the same workers: each continues its own random stream
                set_rng_state(extra["rng"])
            earlier = EarlierSessions.from_checkpoint(dict(extra["carried"]))
            step = int(extra["step"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:  # not ours
            raise UserError(
                f"checkpoint {path} cannot be read (its extra-rank file is not what dlscale writes: "
                f"{type(exc).__name__} {str(exc)[:80]}); delete it to resume from an older one"
            ) from None
        return step, earlier


def _check_extra(extra: Any, stepper: Stepper) -> None:
    """A worker's extra state is plain data (weights_only) but may still not be what dlscale
    wrote: the schedule must have the shape of this run's, counters must be finite numbers."""
    if not isinstance(extra, dict) or not same_kind(extra.get("scheduler"), stepper.scheduler.state_dict()):
        raise ValueError("its schedule is not this run's")
    step = extra.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"its step is {step!r}")
    carried = extra.get("carried")
    if not isinstance(carried, dict) or not all(
        value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        for value in carried.values()
    ):
        raise ValueError("its carried totals are not finite numbers")
