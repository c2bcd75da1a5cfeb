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

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dlscale import checkpoint, config as config_mod, runs
from dlscale.batches import BatchOrder, eval_batches, train_batches
from dlscale.config import TrainConfig
from dlscale.data import DataSpec, Splits, load_data
from dlscale.device import autocast, describe, peak_memory_bytes, resolve_device, resolve_precision
from dlscale.errors import UserError
from dlscale.flops import FlopCount, count as count_flops, loss_fn
from dlscale.hardware import hw_report
from dlscale.metrics import global_counts, utilisation
from dlscale.models import ModelInfo, build_model, model_info
from dlscale.progress import TrainProgress
from dlscale.timing import StepTimer

PFS_DAY_FLOPS = 1e15 * 86400


class TrainingDiverged(UserError):
    """The loss stopped being a finite number; the run stops and keeps its last good checkpoint."""


@dataclass
class Stepper:
    """What one optimizer step needs; the trainer and `bench train` share it, so the
    benchmark measures exactly the step that training runs."""

    raw_model: torch.nn.Module  # the module whose state is saved and evaluated
    model: torch.nn.Module  # what the step calls: raw_model, or its compiled form
    device: torch.device
    precision: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    grad_accum: int
    grad_clip: float
    channels_last: bool


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
    beat a resumed run's config.toml). ``model``/``data`` come from the Python API."""
    wall_start = time.perf_counter()
    progress = progress or TrainProgress(None)
    job, start_step = setup(config, overrides or {}, model, data, progress)
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
    try:
        while step < job.total_steps:
            epoch, first = divmod(step, spe)
            epoch_losses: list[torch.Tensor] = []
            for x, y in timer.waiting_for(train_batches(job.splits.train, job.order, epoch, first, cfg.workers)):
                loss = train_step(job.stepper, x, y)
                step, samples = step + 1, samples + job.order.global_batch
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
                if step == job.total_steps:
                    break
            if cfg.eval_every_epoch and job.splits.val is not None:
                run_validation(job, step, epoch, epoch_losses, loop_start, progress)
                timer.restart(step, samples)
        progress.stop()
        save_checkpoint(job, step, timer, loop_start, wall_start)
        test_loss, test_accuracy = evaluate(job, job.splits.test)
    finally:
        progress.stop()
    summary = summarize(job, step, timer, last_loss, test_loss, test_accuracy, wall_start)
    runs.write_json(job.run_dir / "hardware.json", hw_report())  # now with the measured peaks (cached)
    runs.write_json(job.run_dir / "summary.json", summary)
    progress.summary_table(summary, str(job.run_dir))
    return TrainResult(summary=summary, run_dir=job.run_dir, model=job.stepper.raw_model)


def train_step(s: Stepper, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step over the batch, split into ``grad_accum`` micro-batches."""
    x, y = to_device(s, x), y.to(s.device, non_blocking=True)
    total = torch.zeros((), device=s.device)
    for micro_x, micro_y in zip(x.chunk(s.grad_accum), y.chunk(s.grad_accum)):
        with autocast(s.device, s.precision):
            loss = loss_fn(s.model(micro_x), micro_y) / s.grad_accum
        if s.scaler is not None:
            s.scaler.scale(loss).backward()
        else:
            loss.backward()
        total += loss.detach()
    if s.grad_clip > 0:
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.raw_model.parameters(), s.grad_clip)
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    return total


def log_interval(
    job: Job, timer: StepTimer, window: list[torch.Tensor], step: int, samples: int, progress: TrainProgress
) -> float:
    """A sync point: close the timing interval, check the loss, write one metrics line."""
    seconds, lap_samples = timer.lap(step, samples)
    losses = torch.stack(window).float().cpu()
    first_step = step - len(window) + 1
    window.clear()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise TrainingDiverged(_divergence_message(job, first_step + int(bad[0, 0]), float(losses[bad[0, 0]])))
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
    job.metrics.write(record)
    progress.epoch_line(record, job.epochs)


@torch.inference_mode()
def evaluate(job: Job, dataset: Dataset | None) -> tuple[float | None, float | None]:
    """Mean loss and accuracy over every sample (every token, for language models)."""
    if dataset is None or len(dataset) == 0:
        return None, None
    s = job.stepper
    s.raw_model.eval()  # eager: a compiled model would recompile for eval mode and odd batch sizes
    loss_sum = torch.zeros((), device=s.device, dtype=torch.float64)
    correct = torch.zeros((), device=s.device, dtype=torch.int64)
    count = 0
    for x, y in eval_batches(dataset, job.order.local_batch, workers=job.config.workers):
        x, y = to_device(s, x), y.to(s.device, non_blocking=True)
        with autocast(s.device, s.precision):
            logits = s.raw_model(x)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        loss_sum += torch.nn.functional.cross_entropy(flat, y.reshape(-1), reduction="sum")
        correct += (flat.argmax(-1) == y.reshape(-1)).sum()
        count += y.numel()
    s.raw_model.train()
    return float(loss_sum) / count, int(correct) / count


def to_device(s: Stepper, x: torch.Tensor) -> torch.Tensor:
    x = x.to(s.device, non_blocking=True)
    if s.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# --------------------------------------------------------------------------- setup


def setup(
    config: TrainConfig,
    overrides: dict[str, Any],
    model: torch.nn.Module | None,
    data: Splits | None,
    progress: TrainProgress,
) -> tuple[Job, int]:
    config, run_dir, resume_from = locate_run(config, overrides)
    if config.nproc > 1 or config.nnodes > 1:
        raise UserError(
            "--nproc/--nnodes above 1 are not supported by this version yet "
            "(multi-process training is in progress); run with one process"
        )
    seed_everything(config.seed)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)

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
    example_x, example_y = _example_batch(splits.train)
    flops = count_flops(model, example_x, example_y)

    use_cuda = device.type == "cuda"
    conv = info.conv if info is not None else any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    config = config.replace(
        device=str(device),
        precision=precision,
        compile=use_cuda if config.compile is None else config.compile,
        channels_last=(use_cuda and conv) if config.channels_last is None else config.channels_last,
        lr=config.lr or (1e-3 if config.optimizer == "adamw" else 0.1),
        weight_decay=config.weight_decay if config.weight_decay is not None else (0.01 if config.optimizer == "adamw" else 5e-4),
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else total_steps // 20,
        epochs=epochs if config.max_steps else config.epochs,
    )
    splits = _keep_small_data_on_device(splits, device)
    job = Job(
        config=config, run_dir=run_dir, splits=splits, model_name=model_name,
        stepper=build_stepper(config, model, device, total_steps),
        order=BatchOrder(len(splits.train), config.batch_size, config.seed),
        total_steps=total_steps, epochs=epochs, flops=flops, metrics=runs.MetricsLog(run_dir / "metrics.jsonl"),
        tokens_per_sample=splits.input_shape[0] if splits.kind == "tokens" else 1,
    )
    if resume_from is None and not runs.holds_run(run_dir):
        runs.create_run_dir(run_dir)
    runs.write_toml(run_dir / "config.toml", config_mod.to_toml_dict(config))
    runs.write_json(run_dir / "hardware.json", hw_report(measure=False))
    start_step = restore_checkpoint(job, resume_from) if resume_from else 0
    job.metrics.truncate_after(start_step)
    return job, start_step


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
            candidate = runs.find_resumable(Path("runs"), config.model, config.data)
    elif config.resume is not None:
        candidate = Path(config.resume)
        if not candidate.is_dir() or not (candidate / "config.toml").is_file():
            raise UserError(
                f"--resume {config.resume}: no run there (no config.toml); give a run directory "
                "such as runs/<timestamp>-<model>-<data>, or --resume auto"
            )
    if candidate is None:
        run_dir = Path(config.run_dir) if config.run_dir else runs.default_run_dir(config.model, config.data)
        runs.check_new_run_dir(run_dir)  # created only once the model and data are known to be fine
        return config.replace(resume=None), run_dir, None
    if (candidate / "summary.json").exists():
        raise UserError(
            f"run {candidate} has already finished (its summary.json is there) and is kept as it is; "
            "start a new run with another --run-dir"
        )
    resumed = config_mod.build(
        config_mod.read_toml(candidate / "config.toml"),
        **{**overrides, "run_dir": str(candidate), "resume": str(candidate)},
    )
    return resumed, candidate, checkpoint.newest_checkpoint(candidate)


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


def _example_batch(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real samples: enough to count FLOPs per sample (batch norm needs more than one)."""
    pairs = [dataset[i] for i in range(min(2, len(dataset)))]
    return torch.stack([p[0] for p in pairs]), torch.stack([torch.as_tensor(p[1]) for p in pairs])


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


def build_stepper(config: TrainConfig, model: torch.nn.Module, device: torch.device, total_steps: int) -> Stepper:
    """Place the model (channels_last, compile) and build its optimizer, schedule and scaler.
    ``config`` is resolved: precision, compile, channels_last and lr are concrete values."""
    raw_model = model.to(device)
    if config.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, raw_model, device)
    return Stepper(
        raw_model=raw_model,
        model=torch.compile(raw_model) if config.compile else raw_model,
        device=device,
        precision=config.precision,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(config.schedule, config.warmup_steps, total_steps)
        ),
        scaler=torch.amp.GradScaler(device.type) if config.precision == "fp16" else None,
        grad_accum=config.grad_accum,
        grad_clip=config.grad_clip,
        channels_last=config.channels_last,
    )


def make_optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum; no weight decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    fused = device.type == "cuda" or None  # the fused CUDA kernels: one launch for all parameters
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


def lr_factor(schedule: str, warmup: int, total: int):
    """Linear warm-up to the base learning rate, then cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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
    carried = {
        **job.carried,
        "warmup_seconds": timer.warmup_seconds,
        "timed_seconds": timer.timed_seconds,
        "timed_samples": timer.timed_samples,
        "timed_data_seconds": timer.timed_data_seconds,
        "loop_seconds": time.perf_counter() - loop_start,
        "wall_seconds": job.carried.get("wall_seconds_before", 0.0) + time.perf_counter() - wall_start,
    }
    s = job.stepper
    state = {
        "model": s.raw_model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else {},
        "rng": rng_state(),
        "step": step,
        "carried": carried,
    }
    meta = {"model": job.model_name, "data": job.splits.name, "world_size": 1}
    checkpoint.save(job.run_dir, step, state, meta, keep=job.config.keep_checkpoints)


def restore_checkpoint(job: Job, path: Path) -> int:
    state = checkpoint.load(path)
    s = job.stepper
    try:
        s.raw_model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(
            f"checkpoint {path} does not fit this model ({str(exc).splitlines()[0][:160]}); "
            "resume with the model and data the run was started with"
        ) from None
    s.scheduler.load_state_dict(state["scheduler"])
    if s.scaler is not None and state["scaler"]:
        s.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    carried = dict(state["carried"])
    carried["wall_seconds_before"] = carried.pop("wall_seconds", 0.0)
    job.carried = carried
    return int(state["step"])


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
    usage = utilisation(flops_per_sample, samples_per_second, device, job.stepper.precision)
    tokens = job.tokens_per_sample if job.splits.kind == "tokens" else None
    return {
        "model": job.model_name,
        "data": job.splits.name,
        "device": describe(device),
        "precision": job.stepper.precision,
        "world_size": 1,
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
        "target_accuracy": job.config.target_accuracy,
        "time_to_target_seconds": carried.get("time_to_target_seconds"),
        "time_to_target_step": carried.get("time_to_target_step"),
        "parameters": sum(p.numel() for p in job.stepper.raw_model.parameters()),
        "run_dir": str(job.run_dir),
    }


def _header(job: Job, start_step: int) -> str:
    s = job.splits
    sizes = " / ".join(f"{len(d)} {n}" for n, d in (("train", s.train), ("val", s.val), ("test", s.test)) if d is not None)
    resumed = f", resuming at step {start_step}" if start_step else ""
    return (
        f"dlscale: {job.model_name} on {s.name} ({sizes}) · {describe(job.stepper.device)} · {job.stepper.precision}"
        f" · batch {job.order.global_batch} · {job.total_steps} steps{resumed} → {job.run_dir}"
    )


def _divergence_message(job: Job, step: int, value: float) -> str:
    newest = checkpoint.newest_checkpoint(job.run_dir)
    kept = f"the last good checkpoint is {newest}" if newest else "no checkpoint had been saved yet"
    return (
        f"loss became {value} at step {step}; training stopped and {kept}; "
        "lower --lr, add --grad-clip 1.0, or use --precision fp32"
    )
