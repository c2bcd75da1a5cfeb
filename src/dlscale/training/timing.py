"""Honest step timing: the clock is read only after the device is synchronised, and
warm-up steps (compilation, autotuning, first allocations) are kept apart from the
timed steps instead of being averaged in.

The trainer calls ``lap`` at its sync points (log steps, before evaluation and
checkpoints) and ``restart`` after work that is not training (evaluation, saving).
Between sync points the device runs ahead freely: no per-step synchronisation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

from dlscale.hardware.device import synchronize


T = TypeVar("T")


class StepTimer:
    def __init__(self, device: torch.device, warmup_steps: int) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.warmup_seconds = 0.0
        self.timed_seconds = 0.0
        self.timed_samples = 0
        self.timed_data_seconds = 0.0  # host time spent waiting for the next batch in timed steps
        self.timed_rates: list[float] = []  # samples/s of each timed interval: their spread says how steady the run was
        self._lap_data_seconds = 0.0
        self._mark = 0.0
        self._mark_step = 0
        self._mark_samples = 0

    def restart(self, step: int, samples: int) -> None:
        """Start timing from here; whatever ran since the last lap is not training."""
        synchronize(self.device)
        self._mark, self._mark_step, self._mark_samples = time.perf_counter(), step, samples
        self._lap_data_seconds = 0.0

    def lap(self, step: int, samples: int) -> tuple[float, int]:
        """Close the interval ending at ``step``; return its seconds and samples."""
        synchronize(self.device)  # a CPU-GPU sync point: only at log/eval/checkpoint steps
        now = time.perf_counter()
        seconds, lap_samples = now - self._mark, samples - self._mark_samples
        if self._mark_step < self.warmup_steps:
            self.warmup_seconds += seconds
        else:
            self.timed_seconds += seconds
            self.timed_samples += lap_samples
            self.timed_data_seconds += self._lap_data_seconds
            if seconds > 0 and lap_samples > 0:
                self.timed_rates.append(lap_samples / seconds)
        self._lap_data_seconds = 0.0
        self._mark, self._mark_step, self._mark_samples = now, step, samples
        return seconds, lap_samples

    def waiting_for(self, batches: Iterable[T]) -> Iterator[T]:
        """Yield from ``batches``, adding the time each ``next`` blocks to the data-wait total."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._lap_data_seconds += time.perf_counter() - start
            yield batch
