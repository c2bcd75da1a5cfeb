"""The launcher side of ``dlscale train --nproc N`` (and --nnodes): fix the run directory
and its config.toml, then let torchrun's elastic agent start the workers.

Each worker runs ``dlscale train --resume RUN_DIR``: it reads config.toml, starts fresh
when the run has no checkpoint yet, and resumes from the newest one when the agent
restarts it after a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dlscale.distributed.elastic import LaunchPlan, launch, rendezvous_id
from dlscale.errors import UserError
from dlscale.hardware.device import resolve_device
from dlscale.models import model_info
from dlscale.progress import TrainProgress
from dlscale.runs import directory as runs
from dlscale.runs import results
from dlscale.runs.claim import CLAIM_ENV, abandon_claimed, release_all
from dlscale.runs.files import write_toml
from dlscale.training import config as config_mod
from dlscale.training import settings as settings_mod
from dlscale.training.config import TrainConfig
from dlscale.training.resume import locate_run
from dlscale.training.signals import LAUNCHER_PID_ENV
from dlscale.training.trainer import TrainResult


def launch_training(config: TrainConfig, overrides: dict[str, Any], progress: TrainProgress) -> TrainResult:
    """Start the run's workers on this node and wait for them; the summary is theirs."""
    if config.nnodes > 1 and not config.run_dir and config.resume in (None, "auto"):
        raise UserError("with --nnodes above 1 give --run-dir on a file system every node shares")
    if config.nnodes > 1 and config.resume is None and _joins_run_of_another_node(config):
        run_dir = Path(config.run_dir)  # another node's launcher created it for this same job
    else:
        config, run_dir, _ = locate_run(config, overrides)  # a resumed run's config.toml, with the flags on top
    try:
        return _launch_workers(config, run_dir, progress)
    except BaseException:
        abandon_claimed()  # a fresh run whose workers failed before a checkpoint leaves only its logs
        raise
    finally:
        release_all()


def _joins_run_of_another_node(config: TrainConfig) -> bool:
    """On several nodes every node's launcher starts with the same flags and --run-dir: the
    first to arrive writes config.toml, the others join when it says the same."""
    path = Path(config.run_dir) / "config.toml"
    if not path.is_file() or (Path(config.run_dir) / "summary.json").exists():
        return False
    ours = config_mod.to_toml_dict(config)
    return config_mod.to_toml_dict(config_mod.build(config_mod.read_toml(path))) == ours


def _launch_workers(config: TrainConfig, run_dir: Path, progress: TrainProgress) -> TrainResult:
    world = config.nproc * config.nnodes
    if config.batch_size % world:
        raise UserError(
            f"--batch-size {config.batch_size} (the global batch) does not split evenly over {world} workers; "
            f"pick a multiple of {world}"
        )
    model_info(config.model)  # an unknown name fails here, before any worker starts
    settings_mod.refuse_incompatible(settings_mod.Combination(  # so do settings that cannot run together
        config.strategy, world, resolve_device(config.device).type, config.precision, config.channels_last))
    if not runs.holds_run(run_dir):
        runs.create_run_dir(run_dir)
        write_toml(run_dir / "config.toml", config_mod.to_toml_dict(config))
    meeting_point = config.rdzv_endpoint or f"{config.master_addr}:{config.master_port}"
    plan = LaunchPlan(
        nproc=config.nproc, nnodes=config.nnodes, node_rank=config.node_rank, rdzv_endpoint=config.rdzv_endpoint,
        master_addr=config.master_addr, master_port=config.master_port, max_restarts=config.max_restarts,
        # every node's launcher derives the same id (the run folder's name, not its mount path)
        run_id=config.rdzv_id or rendezvous_id(run_dir.name, meeting_point, config.nnodes, config.nproc),
        timeout_s=config.timeout,
    )
    progress.print(f"dlscale: starting {world} workers ({config.nproc} per node) through torchrun's elastic agent → {run_dir}")
    # the workers share this launcher's claim on the run, and die with it
    shared = {CLAIM_ENV: str(run_dir.resolve()), LAUNCHER_PID_ENV: str(os.getpid())}
    # --timeout travels as a flag: the workers' process groups must wait what the user said
    worker_args = ["train", "--resume", str(run_dir), "--timeout", repr(config.timeout), "--max-requeues", str(config.max_requeues)]
    launch(worker_args, plan, log_dir=run_dir / "logs", env=shared)  # torchrun gives each node's agent its own folder
    return TrainResult(summary=results.read_summary(run_dir), run_dir=run_dir, model=None)
