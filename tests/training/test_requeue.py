"""When a SLURM job stopped by a signal puts itself back in the queue."""

import signal

from dlscale.training.requeue import decide, restart_count

JOB = {"SLURM_JOB_ID": "42"}


def test_only_a_time_limit_signal_inside_a_slurm_job_requeues():
    assert decide(signal.SIGUSR1, 10, JOB) == (True, decide(signal.SIGUSR1, 10, JOB)[1])
    assert "requeue 1 of at most 10" in decide(signal.SIGUSR1, 10, JOB)[1]
    assert decide(signal.SIGTERM, 10, JOB) == (False, None)  # scancel or a preemption that kills: no requeue
    assert decide(signal.SIGUSR1, 10, {}) == (False, None)  # not a SLURM job


def test_requeues_are_capped_and_the_cap_is_said():
    requeue, said = decide(signal.SIGUSR1, 3, {**JOB, "SLURM_RESTART_COUNT": "3"})
    assert not requeue
    assert "requeued 3 time(s) already (--max-requeues 3)" in said and "--resume" in said
    assert decide(signal.SIGUSR1, 3, {**JOB, "SLURM_RESTART_COUNT": "2"})[0]


def test_the_restart_count_is_none_outside_slurm():
    assert restart_count({}) is None
    assert restart_count(JOB) == 0
    assert restart_count({**JOB, "SLURM_RESTART_COUNT": "2"}) == 2
