"""What a checkpoint carries forward: the totals of every session so far."""

import torch

from dlscale.training.state import EarlierSessions, TrainState
from dlscale.training.timing import StepTimer


def _session(earlier: EarlierSessions, seconds: float, samples: int) -> TrainState:
    timer = StepTimer(torch.device("cpu"), warmup_steps=0)
    timer.warmup_seconds, timer.timed_seconds, timer.timed_samples, timer.timed_data_seconds = 1.0, seconds, samples, 0.25
    return TrainState.begin(step=0, earlier=earlier, timer=timer, wall_start=0.0)


def test_a_run_resumed_twice_carries_the_time_and_samples_of_all_its_sessions():
    """A second resume must still count the first session: summary.json's samples/s and MFU
    are totals over the run (before, each checkpoint kept only its own session's)."""
    first = _session(EarlierSessions(), seconds=2.0, samples=100).carried()
    second = _session(EarlierSessions.from_checkpoint(first), seconds=3.0, samples=150).carried()
    third = EarlierSessions.from_checkpoint(second)
    assert (third.timed_seconds, third.timed_samples) == (5.0, 250)
    assert (third.warmup_seconds, third.timed_data_seconds) == (2.0, 0.5)
