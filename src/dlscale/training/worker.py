"""The worker side of ``dlscale train``: a process started by a user for one worker, or by
torchrun (``dlscale train --resume RUN_DIR``), SLURM or MPI for one of several. It joins
the process group, trains its share, and leaves the run and the group cleanly whatever
happens."""

from __future__ import annotations

import sys
from typing import Any

import torch

from dlscale.data import Splits
from dlscale.distributed import process_group as dist
from dlscale.distributed.env import ClusterEnv
from dlscale.errors import Stopped
from dlscale.hardware.device import resolve_device
from dlscale.progress import TrainProgress
from dlscale.runs.claim import abandon_claimed, release_all
from dlscale.training.config import TrainConfig
from dlscale.training.requeue import decide as requeue_wanted, requeue_after_stop
from dlscale.training.signals import die_with_launcher, stop_quietly_under_launcher
from dlscale.training.trainer import Trainer, TrainResult


def run_worker(
    config: TrainConfig, overrides: dict[str, Any], env: ClusterEnv,
    model: torch.nn.Module | None, data: Splits | None, progress: TrainProgress, callbacks: list[Any] | None = None,
    keep_process_group: bool = False,
) -> TrainResult:
    die_with_launcher()
    device = resolve_device(config.device, env.local_rank)
    dist.init(env, device, config.timeout)
    try:
        return Trainer(config, overrides, env, device, model, data, progress, callbacks).fit()
    except Stopped as stopped:  # saved and stopped on a signal: SLURM's warning asks to requeue
        stop_quietly_under_launcher()
        if dist.is_main() and requeue_wanted(stopped.signum, config.max_requeues)[1]:
            # said now: a requeue ends this job at once, before the CLI would print it
            print(f"dlscale: {stopped}", file=sys.stderr, flush=True)
            stopped.said = True
            print(requeue_after_stop(stopped.signum, config.max_requeues), file=sys.stderr, flush=True)
        raise
    except BaseException as exc:
        abandon_claimed()  # a fresh run that failed before its first checkpoint leaves nothing behind
        failure = dist.collective_failure(exc, config.timeout) if isinstance(exc, (RuntimeError, dist.DistError)) else None
        if failure is not None:
            raise failure from None
        raise
    finally:
        release_all()
        dist.shutdown(keep=keep_process_group)
