"""SLURM's time limit and preemption: a job told to stop ahead of its limit (SIGUSR1, from
``#SBATCH --signal=USR1@S``) saves a checkpoint, then puts itself back in the queue with
``scontrol requeue``, as Lightning's SLURM auto-requeue does; the requeued job (SLURM counts
it in ``SLURM_RESTART_COUNT``) continues the same run. A job is requeued at most
``--max-requeues`` times, and only when a signal stopped it: one that ends or fails for
its own reasons is never put back.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping


def restart_count(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many times SLURM has requeued this job; None outside a SLURM job."""
    if "SLURM_JOB_ID" not in environ:
        return None
    try:
        return max(0, int(environ.get("SLURM_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def decide(signum: int, max_requeues: int, environ: Mapping[str, str] = os.environ) -> tuple[bool, str | None]:
    """(requeue now?, what to say): only a SIGUSR1 inside a SLURM job, fewer than
    ``max_requeues`` times; None to say nothing (not a SLURM time-limit stop)."""
    count = restart_count(environ)
    if count is None or signum != signal.SIGUSR1:
        return False, None
    job = environ["SLURM_JOB_ID"]
    if count >= max_requeues:
        return False, (f"dlscale: SLURM job {job} not requeued: it was requeued {count} time(s) already "
                       f"(--max-requeues {max_requeues}); continue with --resume")
    return True, f"dlscale: requeueing SLURM job {job} (requeue {count + 1} of at most {max_requeues}); it continues this run"


def requeue_after_stop(signum: int, max_requeues: int) -> str | None:
    """Requeue this job when ``decide`` says so (call once, on rank 0, after the checkpoint
    is saved); the line to print, or None."""
    requeue, said = decide(signum, max_requeues)
    if not requeue:
        return said
    job = os.environ["SLURM_JOB_ID"]
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"dlscale: could not requeue SLURM job {job} ({exc}); continue with --resume"
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split())[:200]
        return f"dlscale: could not requeue SLURM job {job} ({reason}); continue with --resume"
    return said
