"""Everything a run builds before its first step, in order: where it lives (fresh or
resumed) → data → model → FLOPs per sample → precision, compile, channels_last → the
batch checked against memory → optimizer and schedule → config.toml, agreed by every
worker → the peak FLOP/s for MFU."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.data import Splits, load_data
from dlscale.data.batches import BatchOrder, first_samples, head
from dlscale.data.loader import Feed, auto_workers
from dlscale.distributed import process_group as dist
from dlscale.distributed.env import ClusterEnv
from dlscale.errors import UserError
from dlscale.hardware.peaks import PeakFlops, measured_peaks, peak_for
from dlscale.hardware.report import hw_report
from dlscale.models import ModelInfo, build_model, model_info
from dlscale.models.flops import FlopCount, count as count_flops, loss_for, loss_name
from dlscale.runs import directory as runs
from dlscale.runs import results
from dlscale.runs.files import write_toml
from dlscale.runs.metrics_log import MetricsLog
from dlscale.training import autotune
from dlscale.training import config as config_mod
from dlscale.training import memory
from dlscale.training import settings as settings_mod
from dlscale.training.config import TrainConfig
from dlscale.training.evaluate import metric_names
from dlscale.training.model_files import init_weights, model_spec, write_spec
from dlscale.training.resume import locate_run
from dlscale.training.state import seed_everything
from dlscale.training.step import Stepper, build_stepper, check_trainable


@dataclass(frozen=True)
class Job:
    """Everything one run needs, built before the first step and fixed from then on."""

    config: TrainConfig  # resolved: no "auto" left
    run_dir: Path
    splits: Splits
    feeds: dict[str, Feed | None]  # train, val (cut to --val-samples) and test: how their batches are read
    model_name: str
    stepper: Stepper
    order: BatchOrder
    total_steps: int
    epochs: int
    flops: FlopCount | None
    metrics: MetricsLog
    tokens_per_sample: int  # 1 for classifiers, the sequence length for language models
    parameters: int  # counted before any sharding
    tuned: dict[str, Any] | None  # the CPU settings probe's choice and timings, when it ran
    peak: PeakFlops  # one device's peak FLOP/s at the run's precision, for MFU
    machine_peaks: dict[str, Any]  # the measured peaks that peak came from, kept in hardware.json

    def ends_epoch(self, step: int) -> bool:
        """Whether ``step`` is the last of an epoch (or of the run, which may end mid-epoch)."""
        return step % self.order.steps_per_epoch == 0 or step == self.total_steps


def setup(
    config: TrainConfig,
    overrides: dict[str, Any],
    env: ClusterEnv,
    device: torch.device,
    model: torch.nn.Module | None,
    data: Splits | None,
) -> tuple[Job, Path | None]:
    """The job, and the checkpoint to resume from (None for a fresh start)."""
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
    if config.precision != "auto":
        settings_mod.check_precision(config.precision, device)  # fp16 on a CPU, bf16 on a GPU without it: said now

    info = None if model is not None else model_info(config.model)
    splits = data if data is not None else load_data(
        config.data, settings_mod.data_spec(info), seed=config.seed, synthetic_samples=config.synthetic_samples,
        augment=config.augment, image_size=config.image_size, skip_bad_files=config.skip_bad_files,
    )
    if info is not None:
        _check_kinds(info, splits)
        torch.manual_seed(config.seed)
        model = build_model(config.model, splits.input_shape, splits.num_classes)
    model_name = config.model if info is not None else type(model).__name__
    check_trainable(model)  # said now, before the probe or a collective would trip over it
    if config.init_from and resume_from is None:  # fine-tune: start from trained weights
        init_weights(config.init_from, model, splits)

    steps_per_epoch = len(splits.train) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the training set "
            f"({len(splits.train)} samples); use a batch size of at most {len(splits.train)}"
        )
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    example_x, example_y = first_samples(splits.train, 2)  # batch norm needs more than one
    loss = loss_name(splits.targets, config.loss)  # the loss and metrics must fit the data's targets: said now
    metrics = metric_names(splits.targets, config.metrics)
    if config.target_accuracy is not None and "accuracy" not in metrics:
        raise UserError("--target-accuracy needs class labels and the accuracy metric; leave it out for regression")
    flops = count_flops(model, example_x, example_y, loss_for(splits.targets, loss))

    chosen = settings_mod.resolve(
        device, model, first_samples(splits.train, min(config.batch_size // world, autotune.PROBE_SAMPLES)),
        key=settings_mod.probe_key(model_name, splits.input_shape, splits.num_classes),
        precision=config.precision, compile=config.compile, channels_last=config.channels_last,
        conv=info.conv if info is not None else None, strategy=config.strategy, world=world,
    )
    precision, compiled, channels_last, tuned = chosen.precision, chosen.compile, chosen.channels_last, chosen.tuned
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
        loss=loss,
        metrics=",".join(metrics),
    )
    agree_on_config(config, run_dir, env, device)
    if dist.is_main():  # what rebuilds the model and prepares raw inputs, for dlscale.load and predict
        write_spec(run_dir, model_spec(config.model if info is not None else None, model, splits, precision, channels_last))
    splits = _keep_small_data_on_device(splits, device)
    stepper = build_stepper(
        config, model, device, total_steps, loss_for(splits.targets, loss), pixels=getattr(splits.train, "pixels", False)
    )
    order = BatchOrder(len(splits.train), config.batch_size, config.seed, rank=dist.rank(), world=world)
    parameters = sum(p.numel() for p in model.parameters())
    # looked up now, not in summarize: with no cached figures for this machine it measures for seconds
    machine_peaks = measured_peaks()
    return Job(
        config=config, run_dir=run_dir, splits=splits, feeds=_feeds(splits, config, env, device),
        model_name=model_name, stepper=stepper, order=order,
        total_steps=total_steps, epochs=epochs, flops=flops, metrics=MetricsLog(run_dir / "metrics.jsonl"),
        tokens_per_sample=splits.input_shape[0] if splits.kind == "tokens" else 1,
        parameters=parameters, tuned=tuned,
        peak=peak_for(stepper.device, stepper.precision, machine_peaks),
        machine_peaks=machine_peaks,
    ), resume_from


def _feeds(splits: Splits, config: TrainConfig, env: ClusterEnv, device: torch.device) -> dict[str, Feed | None]:
    """One feed per split, with loader processes for files decoded per sample (auto: the
    usable cores per local process, minus one) and pinned memory for a GPU."""
    workers = config.workers if config.workers is not None else auto_workers(splits.train, env.local_world_size)
    datasets = {"train": splits.train, "val": head(splits.val, config.val_samples), "test": splits.test}
    pin = device.type == "cuda"
    return {name: Feed(d, workers, pin) if d is not None else None for name, d in datasets.items()}


def agree_on_config(config: TrainConfig, run_dir: Path, env: ClusterEnv, device: torch.device) -> None:
    """Rank 0 writes the resolved config.toml; every other worker re-reads it and all check,
    by hash, that they resolved the same configuration and see the same devices per node."""
    resolved = config_mod.to_toml_dict(config)
    if dist.is_main():
        if not runs.holds_run(run_dir):
            runs.create_run_dir(run_dir)
        write_toml(run_dir / "config.toml", resolved)
        results.write_hardware(run_dir, hw_report(measure=False))
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
    return dataclasses.replace(splits, **moved)
