"""The trainer: build everything once, then one loop that reads top to bottom.

    dlscale train                                   # small CNN on digits, best device
    dlscale train --model resnet18 --data synthetic:3x32x32 --max-steps 200
    dlscale train --resume auto                     # continue the newest unfinished run

The walk: resolve the run directory (fresh or resumed) → data → model → FLOPs per
sample → device, precision, compile → optimizer and schedule → restore a checkpoint
→ the loop (train steps; at sync points: time, log, check the loss, checkpoint; at
epoch ends: evaluate) → test → summary.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from dlscale.training import autotune
from dlscale.runs import checkpoint
from dlscale.training import config as config_mod
from dlscale.distributed import process_group as dist
from dlscale.training import memory
from dlscale.runs import directory as runs
from dlscale.training.allocator import keep_freed_memory
from dlscale.data.batches import BatchOrder, eval_batches, first_samples, train_batches
from dlscale.distributed.env import ClusterEnv, detect
from dlscale.training.config import TrainConfig
from dlscale.data import DataSpec, Splits, load_data
from dlscale.hardware.device import autocast, describe, peak_memory_bytes, resolve_device, resolve_precision
from dlscale.hardware.energy import PowerSampler
from dlscale.errors import UserError
from dlscale.models.flops import FlopCount, count as count_flops
from dlscale.hardware.inventory import hw_report
from dlscale.hardware.mfu import global_counts, utilisation
from dlscale.models import ModelInfo, build_model, model_info
from dlscale.progress import TrainProgress
from dlscale.training.signals import LAUNCHER_PID_ENV, StopRequests, Stopped, die_with_launcher, name as signal_name
from dlscale.training.step import Stepper, build_stepper, effective_lr, to_device, train_step
from dlscale.training.timing import StepTimer

PFS_DAY_FLOPS = 1e15 * 86400


class TrainingDiverged(UserError):
    """The loss stopped being a finite number; the run stops and keeps its last good checkpoint."""


@dataclass
class Job:
    """Everything one run needs, built before the first step."""

    config: TrainConfig
    run_dir: Path
    splits: Splits
    model_name: str
    stepper: Stepper
    order: BatchOrder
    total_steps: int
    epochs: int
    flops: FlopCount | None
    metrics: runs.MetricsLog
    tokens_per_sample: int  # 1 for classifiers, the sequence length for language models
    parameters: int  # counted before any sharding
    tuned: dict[str, Any] | None = None  # the CPU settings probe's choice and timings, when it ran
    pet: Callable[[], None] = lambda: None  # tells the watchdog the job still makes progress
    carried: dict[str, Any] = field(default_factory=dict)  # totals carried across a resume


@dataclass
class TrainResult:
    summary: dict[str, Any]
    run_dir: Path
    model: torch.nn.Module


# --------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    overrides: dict[str, Any] | None = None,
    *,
    model: torch.nn.Module | None = None,
    data: Splits | None = None,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Run one training job; ``overrides`` are the values the user set explicitly (they
    beat a resumed run's config.toml). ``model``/``data`` come from the Python API.

    Started by a user with --nproc/--nnodes above 1, this process becomes the launcher
    (see ``launch_training``); started as a worker (torchrun, SLURM, MPI), it joins the
    process group and trains its share."""
    env = detect()
    if env.world_size == 1 and config.nproc * config.nnodes > 1:
        if model is not None or data is not None:
            raise UserError(
                "fit() with your own module or data trains in one process; for several, run your "
                "script under torchrun, or give zoo and data names"
            )
        return launch_training(config, overrides or {}, progress or TrainProgress(None))
    die_with_launcher()
    device = resolve_device(config.device, env.local_rank)
    dist.init(env, device, config.timeout)
    try:
        return _train(config, overrides or {}, env, device, model, data, progress or TrainProgress(None))
    except BaseException as exc:
        runs.abandon_claimed()  # a fresh run that failed before its first checkpoint leaves nothing behind
        failure = dist.collective_failure(exc, config.timeout) if isinstance(exc, (RuntimeError, dist.DistError)) else None
        if failure is not None:
            raise failure from None
        raise
    finally:
        runs.release_all()
        dist.shutdown()


def _joins_run_of_another_node(config: TrainConfig) -> bool:
    """On several nodes every node's launcher starts with the same flags and --run-dir: the
    first to arrive writes config.toml, the others join when it says the same."""
    path = Path(config.run_dir) / "config.toml"
    if not path.is_file() or (Path(config.run_dir) / "summary.json").exists():
        return False
    ours = config_mod.to_toml_dict(config)
    return config_mod.to_toml_dict(config_mod.build(config_mod.read_toml(path))) == ours


def _train(
    config: TrainConfig, overrides: dict[str, Any], env: ClusterEnv, device: torch.device,
    model: torch.nn.Module | None, data: Splits | None, progress: TrainProgress,
) -> TrainResult:
    wall_start = time.perf_counter()
    if not dist.is_main():
        progress = TrainProgress(progress.console, enabled=False)  # rank 0 speaks for the job
    job, start_step = setup(config, overrides, env, device, model, data)
    cfg, step, samples = job.config, start_step, 0
    spe = job.order.steps_per_epoch
    log_every = cfg.log_every or max(1, min(100, job.total_steps // 50))
    timing_warmup = start_step + min(5 if cfg.compile else 2, (job.total_steps - start_step) // 2)
    timer = StepTimer(job.stepper.device, timing_warmup)
    window: list[torch.Tensor] = []  # this interval's losses, kept on the device (no sync)
    last_loss = math.nan
    loop_start = time.perf_counter() - job.carried.get("loop_seconds", 0.0)

    progress.print(_header(job, start_step))
    progress.start(job.total_steps, start_step)
    timer.restart(step, samples)
    # with several workers a frozen or dead peer ends the job after --timeout, never a hang
    device = job.stepper.device
    power = PowerSampler(device.index or 0) if device.type == "cuda" else contextlib.nullcontext()
    stop: int | None = None  # the signal every worker agreed to stop on (SIGTERM, SIGINT, SIGUSR1)
    with dist.Watchdog(cfg.timeout) as watchdog, power, StopRequests() as requests, contextlib.ExitStack() as cleanup:
        cleanup.callback(progress.stop)
        cleanup.enter_context(keep_freed_memory(device.type == "cpu"))  # no page faults for reused buffers
        job.pet = watchdog.pet
        while step < job.total_steps and stop is None:
            epoch, first = divmod(step, spe)
            epoch_losses: list[torch.Tensor] = []
            for x, y in timer.waiting_for(train_batches(job.splits.train, job.order, epoch, first, cfg.workers)):
                loss = train_step(job.stepper, x, y)
                watchdog.pet()
                step, samples = step + 1, samples + job.order.local_batch  # this worker's samples
                window.append(loss)
                epoch_losses.append(loss)
                progress.advance(epoch, job.epochs)
                end_of_epoch = step % spe == 0 or step == job.total_steps
                checkpoint_now = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                if step % log_every == 0 or step == timing_warmup or end_of_epoch or checkpoint_now:
                    last_loss = log_interval(job, timer, window, step, samples, progress)
                if checkpoint_now and step < job.total_steps:
                    save_checkpoint(job, step, timer, loop_start, wall_start)
                    timer.restart(step, samples)
                stop = requests.agreed()  # a signal: finish this step, save, stop (all workers at one step)
                if step == job.total_steps or stop is not None:
                    break
            if cfg.eval_every_epoch and job.splits.val is not None and stop is None:
                run_validation(job, step, epoch, epoch_losses, loop_start, progress)
                timer.restart(step, samples)
        progress.stop()
        if stop is not None and step < job.total_steps:
            if window:  # the metrics line of the steps since the last one
                last_loss = log_interval(job, timer, window, step, samples, progress)
            save_checkpoint(job, step, timer, loop_start, wall_start)
            raise Stopped(_stopped_message(job, step, stop), stop)
        save_checkpoint(job, step, timer, loop_start, wall_start)
        test_loss, test_accuracy = evaluate(job, job.splits.test)
    job.carried["energy_kwh"] = _energy(job, power)
    summary = summarize(job, step, timer, last_loss, test_loss, test_accuracy, wall_start)
    if dist.is_main():
        runs.write_json(job.run_dir / "hardware.json", hw_report())  # now with the measured peaks (cached)
        runs.write_json(job.run_dir / "summary.json", summary)
    dist.barrier()  # no worker (nor its node's launcher) ends before summary.json exists
    progress.summary_table(summary, str(job.run_dir))
    return TrainResult(summary=summary, run_dir=job.run_dir, model=job.stepper.raw_model)


def _energy(job: Job, power: Any) -> float | None:
    """kWh of all workers' GPUs, from their power readings; None unless every worker had them."""
    local = getattr(power, "kwh", None)
    total = dist.sum_over_ranks(torch.tensor([local or 0.0, float(local is None)], dtype=torch.float64, device=job.stepper.device))
    if total[1] > 0:
        return None
    return float(total[0]) + (job.carried.get("energy_kwh") or 0.0)


def launch_training(config: TrainConfig, overrides: dict[str, Any], progress: TrainProgress) -> TrainResult:
    """The launcher: fix the run directory and its config.toml, then let torchrun's elastic
    agent start the workers, each running ``dlscale train --resume RUN_DIR``: they read
    config.toml, start fresh when it has no checkpoint yet, and resume from the newest one
    when the agent restarts them after a failure."""
    if config.nnodes > 1 and not config.run_dir and config.resume in (None, "auto"):
        raise UserError("with --nnodes above 1 give --run-dir on a file system every node shares")
    if config.nnodes > 1 and config.resume is None and _joins_run_of_another_node(config):
        run_dir = Path(config.run_dir)  # another node's launcher created it for this same job
    else:
        config, run_dir, _ = locate_run(config, overrides)  # a resumed run's config.toml, with the flags on top
    try:
        return _launch_workers(config, run_dir, progress)
    except BaseException:
        runs.abandon_claimed()  # a fresh run whose workers failed before a checkpoint leaves only its logs
        raise
    finally:
        runs.release_all()


def _launch_workers(config: TrainConfig, run_dir: Path, progress: TrainProgress) -> TrainResult:
    from dlscale.distributed.elastic import STOPPED, LaunchPlan, LauncherSignalled, failure_line, run_workers

    world = config.nproc * config.nnodes
    if config.batch_size % world:
        raise UserError(
            f"--batch-size {config.batch_size} (the global batch) does not split evenly over {world} workers; "
            f"pick a multiple of {world}"
        )
    model_info(config.model)  # an unknown name fails here, before any worker starts
    if not runs.holds_run(run_dir):
        runs.create_run_dir(run_dir)
        runs.write_toml(run_dir / "config.toml", config_mod.to_toml_dict(config))
    plan = LaunchPlan(
        nproc=config.nproc, nnodes=config.nnodes, node_rank=config.node_rank, rdzv_endpoint=config.rdzv_endpoint,
        master_addr=config.master_addr, master_port=config.master_port, max_restarts=config.max_restarts,
    )
    progress.print(f"dlscale: starting {world} workers ({config.nproc} per node) through torchrun's elastic agent → {run_dir}")
    # the workers share this launcher's claim on the run, and die with it
    shared = {runs.CLAIM_ENV: str(run_dir.resolve()), LAUNCHER_PID_ENV: str(os.getpid())}
    previous = {key: os.environ.get(key) for key in shared}
    os.environ.update(shared)
    try:
        failed = run_workers(["train", "--resume", str(run_dir)], plan, log_dir=run_dir / "logs")
    except LauncherSignalled as signalled:  # the workers saved and stopped (or were killed after the grace)
        said = failure_line(run_dir / "logs") or ""
        if said.startswith(STOPPED):
            raise Stopped(said[len("dlscale: "):], signalled.signum) from None
        raise Stopped(f"stopped by {signal_name(signalled.signum)} before the workers saved a checkpoint", signalled.signum) from None
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if failed:
        first = min(failed)
        said = failure_line(run_dir / "logs")
        if said and said.startswith(STOPPED):  # a worker got the signal, not this launcher
            raise Stopped(said[len("dlscale: "):], failed[first] - 128)
        reason = said[len("error: "):] if said else f"see its log under {run_dir / 'logs'}"
        raise UserError(f"worker rank {first} failed (exit code {failed[first]}): {reason}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return TrainResult(summary=summary, run_dir=run_dir, model=None)


def log_interval(
    job: Job, timer: StepTimer, window: list[torch.Tensor], step: int, samples: int, progress: TrainProgress
) -> float:
    """A sync point: close the timing interval, check the loss, write one metrics line."""
    seconds, lap_samples = timer.lap(step, samples)
    losses = dist.mean_over_ranks(torch.stack(window).float()).cpu()  # the global batch's loss
    first_step = step - len(window) + 1
    window.clear()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise TrainingDiverged(_divergence_message(job, first_step + int(bad[0, 0]), float(losses[bad[0, 0]])))
    lap_samples, seconds = global_counts(lap_samples, seconds, job.stepper.device)  # the whole job's rate
    rate = lap_samples / seconds if seconds > 0 else None
    record = {
        "kind": "train",
        "step": step,
        "epoch": (step - 1) // job.order.steps_per_epoch,
        "loss": float(losses.mean()),
        "lr": job.stepper.scheduler.get_last_lr()[0],
        "samples_per_second": rate,
        "step_time_s": seconds / len(losses) if len(losses) else None,
    }
    if job.tokens_per_sample > 1 and rate is not None:
        record["tokens_per_second"] = rate * job.tokens_per_sample
    if dist.is_main():
        job.metrics.write(record)
    if rate is not None:
        unit = "tok" if job.tokens_per_sample > 1 else "samples"
        progress.show_rate(rate * job.tokens_per_sample, record["loss"], unit)
    return float(losses[-1])


def run_validation(
    job: Job, step: int, epoch: int, epoch_losses: list[torch.Tensor], loop_start: float, progress: TrainProgress
) -> None:
    val_loss, val_accuracy = evaluate(job, job.splits.val)
    train_loss = float(torch.stack(epoch_losses).float().mean()) if epoch_losses else None
    record = {"kind": "val", "step": step, "epoch": epoch, "train_loss": train_loss,
              "val_loss": val_loss, "val_accuracy": val_accuracy}
    target = job.config.target_accuracy
    if target is not None and "time_to_target_seconds" not in job.carried and val_accuracy >= target:
        job.carried["time_to_target_seconds"] = time.perf_counter() - loop_start
        job.carried["time_to_target_step"] = step
        record["reached_target"] = target
    if dist.is_main():
        job.metrics.write(record)
    progress.epoch_line(record, job.epochs)


@torch.inference_mode()
def evaluate(job: Job, dataset: Dataset | None) -> tuple[float | None, float | None]:
    """Mean loss and accuracy over every sample (every token, for language models).

    Each worker takes its contiguous share, so every sample counts exactly once (no
    padding duplicates); the sums are all-reduced. Under FSDP every forward is a
    collective, so a worker whose share ran out keeps stepping on a zero-weight batch
    until the longest share is done."""
    if dataset is None or len(dataset) == 0:
        return None, None
    s, world, rank = job.stepper, dist.world_size(), dist.rank()
    sharded = s.parallel is not s.raw_model and not hasattr(s.parallel, "no_sync")  # FSDP2
    module = s.parallel if sharded else s.raw_model  # eager: a compiled model would recompile for eval
    module.eval()
    batch = job.order.local_batch
    longest = max(-(-(len(dataset) * (r + 1) // world - len(dataset) * r // world) // batch) for r in range(world))
    sums = torch.zeros(3, device=s.device, dtype=torch.float64)  # loss, correct, count
    batches = eval_batches(dataset, batch, rank=rank, world=world, workers=job.config.workers)
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
            logits = module(x)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = y.reshape(-1)
        job.pet()
        sums += weight * torch.stack([
            torch.nn.functional.cross_entropy(flat, target, reduction="sum").double(),
            (flat.argmax(-1) == target).sum().double(),
            torch.tensor(float(target.numel()), device=s.device, dtype=torch.float64),
        ])
    module.train()
    loss_sum, correct, count = dist.sum_over_ranks(sums).tolist()
    return loss_sum / count, correct / count


# --------------------------------------------------------------------------- setup


def setup(
    config: TrainConfig,
    overrides: dict[str, Any],
    env: ClusterEnv,
    device: torch.device,
    model: torch.nn.Module | None,
    data: Splits | None,
) -> tuple[Job, int]:
    # Rank 0 decides where the run lives (a fresh timestamped folder, or the run to resume);
    # the other ranks take its answer, so every worker writes to the same place.
    config, run_dir, resume_from = dist.on_main(lambda: locate_run(config, overrides))
    world = dist.world_size()
    if config.batch_size % (world * config.grad_accum):
        raise UserError(
            f"--batch-size {config.batch_size} (the global batch) does not split into {world} workers x "
            f"{config.grad_accum} micro-batches; pick a multiple of {world * config.grad_accum}"
        )
    seed_everything(config.seed)
    resolve_precision(config.precision, device)  # fp16 on a CPU, bf16 on a GPU without it: said now

    info = None if model is not None else model_info(config.model)
    splits = data if data is not None else load_data(
        config.data, _want(info), seed=config.seed, synthetic_samples=config.synthetic_samples
    )
    if info is not None:
        _check_kinds(info, splits)
        torch.manual_seed(config.seed)
        model = build_model(config.model, splits.input_shape, splits.num_classes)
    model_name = config.model if info is not None else type(model).__name__

    steps_per_epoch = len(splits.train) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the training set "
            f"({len(splits.train)} samples); use a batch size of at most {len(splits.train)}"
        )
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    example_x, example_y = first_samples(splits.train, 2)  # batch norm needs more than one
    flops = count_flops(model, example_x, example_y)

    compiled = device.type == "cuda" if config.compile is None else config.compile
    conv = info.conv if info is not None else any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    precision, channels_last, tuned = autotune.settings_for_run(config, device, model, splits, conv, model_name, world)
    memory.check_batch_fits(  # a batch that cannot fit is refused now, not killed by the OOM killer later
        model, example_x, example_y, batch_size=config.batch_size, workers=world, local_workers=env.local_world_size,
        grad_accum=config.grad_accum, device=device, precision=precision,
        compiled=compiled, sharded=config.strategy == "fsdp",
    )
    base_lr = config.lr or (1e-3 if config.optimizer == "adamw" else 0.1)
    warmup = config.warmup_steps if config.warmup_steps is not None else total_steps // 20
    if config.scale_lr and config.warmup_steps is None:  # Goyal et al. 2017 warm up over 5 epochs
        warmup = max(warmup, min(total_steps // 10, 5 * steps_per_epoch))
    config = config.replace(
        device=device.type,  # the kind, not the index: every worker's config must hash the same
        precision=precision,
        compile=compiled,
        channels_last=channels_last,
        lr=base_lr,  # the base rate; with scale_lr the step uses effective_lr(config)
        weight_decay=config.weight_decay if config.weight_decay is not None else (0.01 if config.optimizer == "adamw" else 5e-4),
        warmup_steps=warmup,
        epochs=epochs if config.max_steps else config.epochs,
        nproc=env.local_world_size,
        nnodes=max(1, world // env.local_world_size),
    )
    agree_on_config(config, run_dir, env, device)
    splits = _keep_small_data_on_device(splits, device)
    job = Job(
        config=config, run_dir=run_dir, splits=splits, model_name=model_name,
        stepper=build_stepper(config, model, device, total_steps),
        order=BatchOrder(len(splits.train), config.batch_size, config.seed, rank=dist.rank(), world=world),
        total_steps=total_steps, epochs=epochs, flops=flops, metrics=runs.MetricsLog(run_dir / "metrics.jsonl"),
        tokens_per_sample=splits.input_shape[0] if splits.kind == "tokens" else 1,
        parameters=sum(p.numel() for p in model.parameters()),
        tuned=tuned,
    )
    start_step = restore_checkpoint(job, resume_from) if resume_from else 0
    # rank 0 drops the lines logged after the checkpoint; a corrupt file stops every worker
    dist.on_main(lambda: job.metrics.truncate_after(start_step))
    return job, start_step


def agree_on_config(config: TrainConfig, run_dir: Path, env: ClusterEnv, device: torch.device) -> None:
    """Rank 0 writes the resolved config.toml; every other worker re-reads it and all check,
    by hash, that they resolved the same configuration and see the same devices per node."""
    resolved = config_mod.to_toml_dict(config)
    if dist.is_main():
        if not runs.holds_run(run_dir):
            runs.create_run_dir(run_dir)
        runs.write_toml(run_dir / "config.toml", resolved)
        runs.write_json(run_dir / "hardware.json", hw_report(measure=False))
    dist.barrier()
    if dist.world_size() == 1:
        return
    on_disk = config_mod.to_toml_dict(config_mod.build(config_mod.read_toml(run_dir / "config.toml")))
    dist.check_agreement("the resolved configuration (hash of config.toml)", _digest(on_disk))
    dist.check_agreement("their own configuration against config.toml", _digest(resolved) == _digest(on_disk))
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    per_host: dict[str, set] = {}
    for host, local_world, count in dist.gather((socket.gethostname(), env.local_world_size, gpus)):
        per_host.setdefault(host, set()).add((local_world, count))
    counts = {value for values in per_host.values() for value in values}
    if any(len(values) > 1 for values in per_host.values()) or len({c for _, c in counts}) > 1:
        raise UserError(f"the nodes disagree on workers and GPUs per node: {sorted(counts)}; use identical nodes and --nproc")
    if device.type == "cuda" and any(local_world > count for local_world, count in counts):
        raise UserError(f"{env.local_world_size} workers per node but only {gpus} GPUs; set --nproc to at most {gpus}")


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def locate_run(config: TrainConfig, overrides: dict[str, Any]) -> tuple[TrainConfig, Path, Path | None]:
    """Where this run writes, and the checkpoint it resumes from (None for a fresh start).

    Resuming reads the old run's config.toml and applies only what the user set
    explicitly on top, so ``dlscale train --resume DIR`` needs no other flag.
    """
    candidate: Path | None = None
    if config.resume == "auto":
        if config.run_dir and runs.holds_run(Path(config.run_dir)):
            candidate = Path(config.run_dir)
        elif not config.run_dir:
            # the newest unfinished run, whatever its model, unless --model/--data narrow it
            candidate = runs.find_resumable(Path("runs"), overrides.get("model"), overrides.get("data"))
            print(
                f"dlscale: --resume auto: continuing {candidate}, the newest unfinished run under runs/"
                if candidate else
                "dlscale: --resume auto: no unfinished run with a checkpoint under runs/; starting a new run",
                file=sys.stderr, flush=True,
            )
    elif config.resume is not None:
        candidate = Path(config.resume)
        if not candidate.is_dir() or not (candidate / "config.toml").is_file():
            raise UserError(
                f"--resume {config.resume}: no run there (no config.toml); give a run directory "
                "such as runs/<timestamp>-<model>-<data>, or --resume auto"
            )
    shared = config.nnodes > 1  # the launchers of one multi-node job share the claim
    if candidate is None:
        if config.run_dir:
            run_dir = runs.claim_new(Path(config.run_dir), shared=shared)
        else:
            run_dir = runs.claim_fresh(runs.run_name(config.model, config.data))
        return config.replace(resume=None), run_dir, None
    _refuse_finished(candidate)
    runs.claim(candidate, shared=shared)
    _refuse_finished(candidate)  # checked again under the claim: a run may have just finished
    checkpoint.remove_stale(candidate)  # a save killed half-way left its temporary folder
    saved = config_mod.read_toml(candidate / "config.toml")
    _refuse_changes(candidate, config_mod.build(saved), overrides)
    resumed = config_mod.build(saved, **{**overrides, "run_dir": str(candidate), "resume": str(candidate)})
    return resumed, candidate, checkpoint.newest_checkpoint(candidate)


# Flags that say how to run, not what: a resumed run may take new values for these.
RESUMABLE_WITH = (
    *config_mod.INVOCATION_KEYS, "nproc", "nnodes", "timeout", "workers", "log_every", "checkpoint_every",
    "keep_checkpoints", "device",
)


def _refuse_changes(run_dir: Path, saved: TrainConfig, overrides: dict[str, Any]) -> None:
    """A resumed run keeps its experiment: a flag that would change it is refused, naming
    the flag, instead of being written into config.toml and silently not applied."""
    for key, value in overrides.items():
        if key in RESUMABLE_WITH or getattr(saved, key, value) == value:
            continue
        flag = "--" + key.replace("_", "-")
        raise UserError(
            f"{flag} {value} would change run {run_dir}, which has {key} = {getattr(saved, key)!r}; a resumed run "
            f"keeps its configuration: drop {flag}, or start a new run with --config {run_dir / 'config.toml'} {flag} {value}"
        )


def _refuse_finished(run_dir: Path) -> None:
    if (run_dir / "summary.json").exists():
        raise UserError(
            f"run {run_dir} has already finished (its summary.json is there) and is kept as it is; "
            "start a new run with another --run-dir"
        )


def _want(info: ModelInfo | None) -> DataSpec:
    if info is None:  # a user's module: real data decides the shapes
        return DataSpec(kind="image", input_shape=(1, 8, 8), num_classes=10)
    return DataSpec(kind=info.kind, input_shape=info.default_input_shape, num_classes=info.default_num_classes)


def _check_kinds(info: ModelInfo, splits: Splits) -> None:
    if info.kind == splits.kind:
        return
    wanted = "token sequences (a text file or synthetic)" if info.kind == "tokens" else "images or features"
    raise UserError(
        f"model {info.name} takes {wanted} but data {splits.name} holds "
        f"{'token sequences' if splits.kind == 'tokens' else 'images'}; pick a matching --model or --data"
    )


def _keep_small_data_on_device(splits: Splits, device: torch.device) -> Splits:
    """In-memory data under 1 GiB goes to the GPU once, instead of a copy every step."""
    if device.type != "cuda":
        return splits
    moved = {}
    for name in ("train", "val", "test"):
        dataset = getattr(splits, name)
        tensors = getattr(dataset, "tensors", None)
        if tensors is not None and sum(t.numel() * t.element_size() for t in tensors) < 2**30:
            dataset = torch.utils.data.TensorDataset(*(t.to(device) for t in tensors))
        moved[name] = dataset
    return Splits(splits.name, splits.kind, splits.input_shape, splits.num_classes, **moved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
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


def save_checkpoint(job: Job, step: int, timer: StepTimer, loop_start: float, wall_start: float) -> None:
    """Model and optimizer through DCP (sharded, reshardable); each worker's own state beside it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    s = job.stepper
    carried = {
        **job.carried,
        "warmup_seconds": timer.warmup_seconds,
        "timed_seconds": timer.timed_seconds,
        "timed_samples": timer.timed_samples,
        "timed_data_seconds": timer.timed_data_seconds,
        "loop_seconds": time.perf_counter() - loop_start,
        "wall_seconds": job.carried.get("wall_seconds_before", 0.0) + time.perf_counter() - wall_start,
    }
    model_state, optimizer_state = get_state_dict(s.raw_model, s.optimizer)
    extra = {
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else {},
        "rng": rng_state(),
        "step": step,
        "carried": carried,
    }
    meta = {"model": job.model_name, "data": job.splits.name, "strategy": job.config.strategy}
    job.pet()
    checkpoint.save(job.run_dir, step, {"model": model_state, "optimizer": optimizer_state}, extra, meta,
                    keep=job.config.keep_checkpoints)
    job.pet()


def restore_checkpoint(job: Job, path: Path) -> int:
    """Load a checkpoint saved by any number of workers into this job's workers."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    s = job.stepper
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
        carried = dict(extra["carried"])
        carried["wall_seconds_before"] = float(carried.pop("wall_seconds", 0.0))
        step = int(extra["step"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:  # not ours
        raise UserError(
            f"checkpoint {path} cannot be read (its extra-rank file is not what dlscale writes: "
            f"{type(exc).__name__} {str(exc)[:80]}); delete it to resume from an older one"
        ) from None
    job.carried = carried
    return step


def _check_extra(extra: Any, stepper: Stepper) -> None:
    """A worker's extra state is plain data (weights_only) but may still not be what dlscale
    wrote: the schedule must have the shape of this run's, counters must be finite numbers."""
    if not isinstance(extra, dict) or not checkpoint.same_kind(extra.get("scheduler"), stepper.scheduler.state_dict()):
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


# --------------------------------------------------------------------------- summary


def summarize(
    job: Job, step: int, timer: StepTimer, final_loss: float, test_loss: float | None,
    test_accuracy: float | None, wall_start: float,
) -> dict[str, Any]:
    """summary.json: every key of the contract, null where it does not apply."""
    carried, device = job.carried, job.stepper.device
    # samples summed over all ranks, over the slowest rank's time (an all-reduce when distributed)
    timed_samples, timed_seconds = global_counts(
        timer.timed_samples + carried.get("timed_samples", 0), timer.timed_seconds + carried.get("timed_seconds", 0.0), device
    )
    data_seconds = timer.timed_data_seconds + carried.get("timed_data_seconds", 0.0)
    warmup_seconds = timer.warmup_seconds + carried.get("warmup_seconds", 0.0)
    train_seconds = warmup_seconds + timed_seconds
    samples_per_second = timed_samples / timed_seconds if timed_seconds > 0 else None
    if samples_per_second is None and train_seconds > 0:  # too few steps to leave warm-up out
        samples_per_second = step * job.order.global_batch / train_seconds
    flops_per_sample = job.flops.train_per_sample if job.flops else None
    total_flops = flops_per_sample * step * job.order.global_batch if flops_per_sample else None
    # devices used: every worker's GPU; for CPUs, every node's CPU (workers on one node share it)
    devices = dist.world_size() if device.type == "cuda" else job.config.nnodes
    usage = utilisation(flops_per_sample, samples_per_second, device, job.stepper.precision, devices)
    tokens = job.tokens_per_sample if job.splits.kind == "tokens" else None
    return {
        "model": job.model_name,
        "data": job.splits.name,
        "device": describe(device),
        "precision": job.stepper.precision,
        "world_size": dist.world_size(),
        "global_batch_size": job.order.global_batch,
        "steps": step,
        "epochs": job.epochs,
        "wall_seconds": carried.get("wall_seconds_before", 0.0) + time.perf_counter() - wall_start,
        "train_seconds": train_seconds,
        "samples_per_second": samples_per_second,
        "flops_per_sample": flops_per_sample,
        "total_flops": total_flops,
        "achieved_flops_per_second": usage["achieved_flops_per_second"],
        "peak_flops_per_second": usage["peak_flops_per_second"],
        "mfu": usage["mfu"],
        "pfs_days": total_flops / PFS_DAY_FLOPS if total_flops else None,
        "final_loss": None if math.isnan(final_loss) else final_loss,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        # beyond the contract's keys
        "peak_source": usage["peak_source"],
        "mfu_datasheet": usage["mfu_datasheet"],
        "mfu_measured_peak": usage["mfu_measured_peak"],
        "measured_peak_flops_per_second": usage["measured_peak_flops_per_second"],
        "warmup_seconds": warmup_seconds,
        "data_wait_fraction": data_seconds / timed_seconds if timed_seconds > 0 else None,
        "forward_flops_per_sample": job.flops.forward_per_sample if job.flops else None,
        "seq_len": tokens,
        "tokens_per_second": samples_per_second * tokens if tokens and samples_per_second else None,
        "flops_per_token": flops_per_sample / tokens if tokens and flops_per_sample else None,
        "peak_memory_bytes": peak_memory_bytes(device),
        "energy_kwh": carried.get("energy_kwh"),  # GPU power readings (nvidia-ml-py); null when not sampled
        "lr": effective_lr(job.config),
        "scale_lr": job.config.scale_lr,
        "target_accuracy": job.config.target_accuracy,
        "time_to_target_seconds": carried.get("time_to_target_seconds"),
        "time_to_target_step": carried.get("time_to_target_step"),
        "parameters": job.parameters,
        "channels_last": job.stepper.channels_last,
        "auto_settings": job.tuned,  # what the CPU probe measured when precision/channels_last were left open
        "run_dir": str(job.run_dir),
    }


def _header(job: Job, start_step: int) -> str:
    s = job.splits
    sizes = " / ".join(f"{len(d)} {n}" for n, d in (("train", s.train), ("val", s.val), ("test", s.test)) if d is not None)
    resumed = f", resuming at step {start_step}" if start_step else ""
    layout = " · channels_last" if job.stepper.channels_last else ""
    header = (
        f"dlscale: {job.model_name} on {s.name} ({sizes}) · {describe(job.stepper.device)} · {job.stepper.precision}"
        f"{layout} · batch {job.order.global_batch} · {job.total_steps} steps{resumed} → {job.run_dir}"
    )
    if job.tuned and job.tuned["step_ms"]:
        timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in job.tuned["step_ms"].items())
        source = "cached measurement" if job.tuned["cached"] else "measured now, cached"
        header += f"\n         settings left on auto, fastest on this CPU ({source}): {timings}"
    return header


def _stopped_message(job: Job, step: int, signum: int) -> str:
    return (
        f"stopped by {signal_name(signum)} after step {step} of {job.total_steps}: checkpoint saved in "
        f"{checkpoint.checkpoints_dir(job.run_dir) / f'step-{step}'}; continue with: dlscale train --resume {job.run_dir}"
    )


def _divergence_message(job: Job, step: int, value: float) -> str:
    newest = checkpoint.newest_checkpoint(job.run_dir)
    kept = f"the last good checkpoint is {newest}" if newest else "no checkpoint had been saved yet"
    return (
        f"loss became {value} at step {step}; training stopped and {kept}; "
        "lower --lr, add --grad-clip 1.0, or use --precision fp32"
    )
