"""``train()``: the one entry point of ``dlscale train`` and ``dlscale.fit``, which decides
what this process is.

    dlscale train                                   # small CNN on digits, best device
    dlscale train --model resnet18 --data synthetic:3x32x32 --max-steps 200
    dlscale train --nproc 2                         # a launcher and two workers
    dlscale train --resume auto                     # continue the newest unfinished run

Asked for several workers and not started as one, the process is the launcher
(``launcher``): torchrun's agent starts each worker as ``dlscale train --resume RUN_DIR``,
whose environment (torchrun's, SLURM's or MPI's) says it is one of several, so it takes
the worker side (``worker``, then ``trainer``). A single process is its own worker.
"""

from __future__ import annotations

from typing import Any

import torch

from dlscale.data import Splits
from dlscale.distributed.env import detect
from dlscale.errors import UserError
from dlscale.progress import TrainProgress
from dlscale.runs.tensorboard import require_tensorboard
from dlscale.training.callbacks import check_validation
from dlscale.training.config import TrainConfig
from dlscale.training.launcher import launch_training
from dlscale.training.trainer import TrainResult
from dlscale.training.worker import run_worker


def train(
    config: TrainConfig,
    overrides: dict[str, Any] | None = None,
    *,
    model: torch.nn.Module | None = None,
    data: Splits | None = None,
    progress: TrainProgress | None = None,
    callbacks: list[Any] | None = None,
    keep_process_group: bool = False,
) -> TrainResult:
    """Run one training job; ``overrides`` are the values the user set explicitly (they
    beat a resumed run's config.toml). ``model``/``data``/``callbacks`` come from the Python API."""
    if config.logger == "tensorboard":
        require_tensorboard()  # said before a run folder or a worker exists
    check_validation(config, has_val=True)  # early stopping with validation switched off, said as early
    env = detect()
    overrides, progress = overrides or {}, progress or TrainProgress(None)
    if env.world_size == 1 and config.nproc * config.nnodes > 1:  # several workers asked for, none started yet
        if model is not None or data is not None or callbacks:
            raise UserError(
                "fit() with your own module, data or callbacks trains in one process; for several, run your "
                "script under torchrun, or give zoo and data names"
            )
        return launch_training(config, overrides, progress)
    return run_worker(config, overrides, env, model, data, progress, callbacks, keep_process_group)
