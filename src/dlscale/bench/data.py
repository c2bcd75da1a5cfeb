"""``dlscale bench data``: how fast the input pipeline delivers training samples, beside
how fast the model trains them on this device, and so whether a run would wait for data.

Three measurements, each repeated (median and spread):

- **decode**: one process decoding and cropping the training files alone, no loader,
  for each decoder (Pillow with JPEG draft mode; Pillow decoding every pixel, to show
  what draft mode buys; simplejpeg, which the pipeline uses for JPEGs where it imports).
  This is the rate one loader process can reach.
- **loader**: the training feed itself (``data.loader.Feed``: the run's augmentation,
  batches, worker processes) at each ``--workers`` count; the first batch (worker start)
  is timed apart.
- **train**: the model's training step on this device at the run's settings, on a batch
  kept on the device (``bench.train.measure``): the rate the loader must keep up with.

A setting is input-bound when its loader rate is below the training rate; the workers
needed are the training rate over one process's decode rate, rounded up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlscale.bench.common import bench_run_dir, median_spread, result_object, write_result
from dlscale.bench.reliability import Interference, spread_fields
from dlscale.bench.train import Setting, Workload, measure, resolve_settings
from dlscale.data import images, load_data
from dlscale.data.batches import BatchOrder, train_batches
from dlscale.data.loader import Feed
from dlscale.hardware.inventory import usable_cores
from dlscale.errors import UserError
from dlscale.hardware.device import resolve_device
from dlscale.models import model_info
from dlscale.training.settings import data_spec

# pillow: with JPEG draft mode; pillow-full: every pixel decoded (what draft mode saves); simplejpeg where it imports
DECODERS = ("pillow", "pillow-full", "simplejpeg")
REPEATS = 3


@dataclass(frozen=True)
class DataBenchRequest:
    data: str
    model: str = "resnet18"
    workers: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    seconds: float = 6.0  # per loader setting, over all repeats
    augment: str = "auto"
    image_size: int | None = None
    device: str = "auto"
    train_steps: int = 5
    run_dir: str | None = None


def run_bench_data(request: DataBenchRequest, say: Callable[[str], None] = lambda _text: None) -> tuple[dict[str, Any], Path]:
    """Measure, write bench-data.json, return (result, its path)."""
    info = model_info(request.model)
    run_dir = bench_run_dir("data", request.model, request.run_dir)
    splits = load_data(request.data, data_spec(info), augment=request.augment, image_size=request.image_size)
    if info.kind != splits.kind:
        raise UserError(f"{request.model} trains on {info.kind} data, and {request.data} holds {splits.kind} samples; pick a matching --model")
    train = splits.train
    if len(train) < request.batch_size:
        raise UserError(f"--batch-size {request.batch_size} is larger than the training set ({len(train)} samples)")
    device = resolve_device(request.device)
    interference = Interference.snapshot()

    decode = {name: _decode_rate(train, name, request.seconds / 2, say) for name in _decoders(train)}
    rows = [_loader_row(train, workers, request, say) for workers in request.workers]
    train_rate = _train_rate(info, splits, request, device, say)
    for row in rows:
        row["train_samples_per_second"] = train_rate
        row["input_bound"] = row["samples_per_second"] < train_rate
    per_process = decode.get("pillow", {}).get("samples_per_second")
    needed = math.ceil(train_rate / per_process) if per_process else 0
    extra = {
        "data": request.data,
        "model": request.model,
        "device": str(device),
        "input_shape": list(splits.input_shape),
        "augment": _augment_of(train),
        "usable_cores": usable_cores(),
        "decode": decode,
        "train_samples_per_second": train_rate,
        "workers_needed": needed,
        "advice": _advice(rows, train_rate, needed),
    }
    result = result_object(rows, kind="data", interference=interference, spread="samples_per_second", **extra)
    path = write_result(run_dir, "data", result)
    return result, path


def _decoders(dataset) -> tuple[str, ...]:
    if not hasattr(dataset, "decode"):
        return ()
    return tuple(d for d in DECODERS if d != "simplejpeg" or images.simplejpeg is not None)


def _augment_of(dataset) -> str | None:
    if not hasattr(dataset, "random_crop"):
        return None
    return "standard" if dataset.random_crop else "none"


def _decode_rate(dataset, decoder: str, seconds: float, say: Callable[[str], None]) -> dict[str, Any]:
    """One process decoding training samples with ``decoder``, no loader: samples/s, median of repeats."""
    rates = []
    index = 0
    for _ in range(REPEATS):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / REPEATS or count < 4:
            rng = np.random.default_rng((0, 0, index)) if dataset.random_crop else None
            dataset.decode(index % len(dataset), rng, decoder)
            index, count = index + 1, count + 1
        rates.append(count / (time.perf_counter() - start))
    median, spread = median_spread(rates)
    say(f"decode ({decoder}, one process): {median:,.0f} samples/s (± {spread:,.0f})")
    return {"samples_per_second": median, "spread": spread, "repeats": rates}


def _loader_row(dataset, workers: int, request: DataBenchRequest, say: Callable[[str], None]) -> dict[str, Any]:
    """The training feed at ``workers`` processes: samples/s after its first batch, median of repeats."""
    order = BatchOrder(len(dataset), request.batch_size, seed=0)
    feed = Feed(dataset, workers=workers)
    rates = []
    try:
        start = time.perf_counter()
        batches = _endless(feed, order)
        next(batches)
        startup = time.perf_counter() - start
        for _ in range(REPEATS):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < request.seconds / REPEATS or count < 2 * request.batch_size:
                count += len(next(batches)[1])
            rates.append(count / (time.perf_counter() - start))
    finally:
        feed.close()
    median, spread = median_spread(rates)
    say(f"loader, {workers} worker process{'es' if workers != 1 else ''}: {median:,.0f} samples/s (± {spread:,.0f}), "
        f"first batch after {startup:.2f} s")
    return {
        "workers": feed.workers,
        "decoder": ("simplejpeg" if images.simplejpeg is not None else "pillow") if hasattr(dataset, "decode") else None,
        "batch_size": request.batch_size,
        "samples_per_second": median,
        "spread": spread,
        "repeats": rates,
        **spread_fields("samples_per_second", rates),
        "startup_s": startup,
    }


def _endless(feed: Feed, order: BatchOrder):
    epoch = 0
    while True:
        yield from train_batches(feed, order, epoch)
        epoch += 1


def _train_rate(info, splits, request: DataBenchRequest, device: torch.device, say: Callable[[str], None]) -> float:
    """The model's training samples/s on ``device`` at the run's settings, on a batch kept on the device."""
    workload = Workload(info=info, input_shape=tuple(splits.input_shape), num_classes=splits.num_classes)
    chosen = resolve_settings(workload, device, request.batch_size)
    setting = Setting(request.batch_size, chosen.precision, chosen.compile, chosen.channels_last)
    row = measure(workload, setting, device, steps=request.train_steps, warmup=2, repeats=REPEATS)
    say(f"training {info.name} on {device} ({chosen.precision}): {row['samples_per_second']:,.0f} samples/s")
    return row["samples_per_second"]


def _advice(rows: list[dict[str, Any]], train_rate: float, needed: int) -> str:
    fast_enough = [r for r in rows if not r["input_bound"]]
    if fast_enough:
        fewest = min(fast_enough, key=lambda r: r["workers"])
        return (f"not input-bound with {fewest['workers']} loader process(es): the loader gives "
                f"{fewest['samples_per_second']:,.0f} samples/s, training takes {train_rate:,.0f}")
    best = max(rows, key=lambda r: r["samples_per_second"])
    return (f"input-bound: the fastest loader setting ({best['workers']} processes) gives {best['samples_per_second']:,.0f} "
            f"samples/s and training takes {train_rate:,.0f}; it needs about {needed} decoding processes "
            "(more cores, a smaller --image-size, or data packed closer to the model's size)")
