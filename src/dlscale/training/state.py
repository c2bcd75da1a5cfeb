"""What a resumed run needs to continue exactly: the loop's counters and the totals of
the sessions before this one (``TrainState``), and every random stream.

A run stopped and resumed is one run in summary.json: its time, samples and energy
add up over its sessions. The checkpoint keeps those totals under ``carried``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlscale.training.timing import StepTimer

CALLBACK_PREFIX = "callbacks."  # the callbacks' counters in a checkpoint's ``carried`` entry


@dataclass(frozen=True)
class EarlierSessions:
    """The totals a checkpoint carried over from the sessions before this process
    (all zero for a fresh run)."""

    resumed: bool = False  # whether this process continues from a checkpoint
    warmup_seconds: float = 0.0
    timed_seconds: float = 0.0
    timed_samples: int = 0
    timed_data_seconds: float = 0.0
    loop_seconds: float = 0.0
    wall_seconds: float = 0.0
    energy_kwh: float | None = None
    time_to_target_seconds: float | None = None
    time_to_target_step: int | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)  # early stopping, best value, plateau (training/callbacks)

    @classmethod
    def from_checkpoint(cls, carried: dict[str, Any]) -> "EarlierSessions":
        """From a checkpoint's ``carried`` entry; a key that an older run did not write counts zero."""
        return cls(
            resumed=True,
            warmup_seconds=carried.get("warmup_seconds", 0.0),
            timed_seconds=carried.get("timed_seconds", 0.0),
            timed_samples=carried.get("timed_samples", 0),
            timed_data_seconds=carried.get("timed_data_seconds", 0.0),
            loop_seconds=carried.get("loop_seconds", 0.0),
            wall_seconds=float(carried.get("wall_seconds", 0.0)),
            energy_kwh=carried.get("energy_kwh"),
            time_to_target_seconds=carried.get("time_to_target_seconds"),
            time_to_target_step=carried.get("time_to_target_step"),
            callbacks={k[len(CALLBACK_PREFIX):]: v for k, v in carried.items() if k.startswith(CALLBACK_PREFIX)},
        )


@dataclass
class TrainState:
    """What the loop advances. ``step`` and the totals go into every checkpoint; the rest
    lives for this process only."""

    step: int  # optimizer steps done, over all sessions
    timer: StepTimer  # this session's warm-up and timed seconds
    wall_start: float  # perf_counter() when this process took up the job (setup counts)
    loop_start: float  # perf_counter() at the loop's start, moved back by earlier sessions' loop time
    earlier: EarlierSessions = field(default_factory=EarlierSessions)
    samples: int = 0  # this worker's samples in this session: the timer's laps count them
    last_loss: float = math.nan  # the loss of the newest logged step, for summary.json
    window: list[torch.Tensor] = field(default_factory=list)  # losses since the last metrics line, on the device (no sync)
    time_to_target_seconds: float | None = None  # loop time until validation first reached --target-accuracy
    time_to_target_step: int | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)  # the callbacks' counters, plain numbers, checkpointed

    @classmethod
    def begin(cls, step: int, earlier: EarlierSessions, timer: StepTimer, wall_start: float) -> "TrainState":
        """The state at the first step of this session: ``step`` 0 or the checkpoint's."""
        return cls(
            step=step, timer=timer, wall_start=wall_start, loop_start=time.perf_counter() - earlier.loop_seconds,
            earlier=earlier, time_to_target_seconds=earlier.time_to_target_seconds,
            time_to_target_step=earlier.time_to_target_step, callbacks=dict(earlier.callbacks),
        )

    def wall_seconds(self) -> float:
        """Wall time of the whole run so far, setup of every session included."""
        return self.earlier.wall_seconds + time.perf_counter() - self.wall_start

    def loop_seconds(self) -> float:
        return time.perf_counter() - self.loop_start

    def carried(self) -> dict[str, Any]:
        """The totals a checkpoint keeps, under the names its ``carried`` entry has always had."""
        carried: dict[str, Any] = {}
        if self.earlier.resumed:  # written by resumed runs since the start; nothing reads it
            carried["wall_seconds_before"] = self.earlier.wall_seconds
        if self.time_to_target_seconds is not None:
            carried["time_to_target_seconds"] = self.time_to_target_seconds
            carried["time_to_target_step"] = self.time_to_target_step
        carried.update(  # every session so far, not only this one: a run may be resumed many times
            warmup_seconds=self.earlier.warmup_seconds + self.timer.warmup_seconds,
            timed_seconds=self.earlier.timed_seconds + self.timer.timed_seconds,
            timed_samples=self.earlier.timed_samples + self.timer.timed_samples,
            timed_data_seconds=self.earlier.timed_data_seconds + self.timer.timed_data_seconds,
            loop_seconds=self.loop_seconds(),
            wall_seconds=self.wall_seconds(),
        )
        carried.update({CALLBACK_PREFIX + k: v for k, v in self.callbacks.items()})
        return carried


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random stream of this process, as plain data a weights-only load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
