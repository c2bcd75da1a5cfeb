"""``dlscale bench train`` as one library call, for the command and the lab alike: the
settings ``dlscale train`` would use here (where the request leaves them open), the
largest batch that fits or a tuning grid, one measured row per setting, and the
bench-train.json that holds them."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.bench.common import bench_run_dir, result_object, write_result
from dlscale.bench.reliability import DEFAULT_BUDGET_S, Interference, overlap
from dlscale.bench.train import Setting, find_max_batch, fits, measure, resolve_settings, workload_for
from dlscale.errors import UserError
from dlscale.hardware.device import resolve_device
from dlscale.models import model_info
from dlscale.progress import SweepProgress


@dataclass(frozen=True)
class TrainBenchRequest:
    """What to measure; None leaves a setting to the resolver ``dlscale train`` uses."""

    model: str = "cnn"
    data: str = "synthetic"
    batch_size: int | None = 64  # None: the largest batch that fits
    precision: str = "auto"
    compile: bool | None = None
    channels_last: bool | None = None
    device: str = "auto"
    steps: int = 20
    warmup: int | None = None  # None: 3, or 10 when compiling
    repeats: int | str = 3  # or "auto": until the median settles, within budget_s per setting
    budget_s: float = DEFAULT_BUDGET_S
    memory_cap_gib: float | None = None  # CPU cap for the largest batch (None: half the RAM)
    max_batch: int = 4096
    tune: bool = False  # try precision x compile x channels_last x batch size, fastest safe first
    run_dir: str | None = None


def run_bench_train(
    request: TrainBenchRequest, say: Callable[[str], None] = lambda _text: None, *, progress: SweepProgress | None = None,
) -> tuple[dict[str, Any], Path]:
    """Measure, write bench-train.json, and return its result object and path; ``progress``
    hears each setting start and finish, else ``say`` hears each start."""
    from dlscale.hardware.inventory import memory_bytes

    if not (request.data == "synthetic" or request.data.startswith("synthetic:")):
        raise UserError(f"bench train runs on synthetic data, got --data {request.data}; train on real data with 'dlscale train'")
    auto_batch = request.batch_size is None
    announce = progress is None  # without a display, ``say`` names each setting
    progress = progress or SweepProgress(None)
    info = model_info(request.model)
    workload = workload_for(info, request.data)
    device = resolve_device(request.device)
    # the settings `dlscale train` would pick for this model here (on a CPU: measured, cached)
    chosen = resolve_settings(workload, device, request.batch_size, request.precision, request.compile, request.channels_last)
    precision, compile_, channels_last = chosen.precision, chosen.compile, chosen.channels_last
    run_dir = bench_run_dir("train", info.name, request.run_dir)
    interference = Interference.snapshot()

    batch_size = request.batch_size
    if batch_size is None:
        cap = int(request.memory_cap_gib * 2**30) if request.memory_cap_gib else (memory_bytes() or 0) // 2 or None
        progress.describe("finding the largest batch that fits")
        say(f"finding the largest batch that fits ({'CUDA memory' if device.type == 'cuda' else f'memory cap {cap / 2**30:.1f} GiB'}) ...")
        batch_size = find_max_batch(
            lambda b: fits(workload, Setting(b, precision, False, channels_last), device, cap), limit=request.max_batch
        )
        if batch_size is None:
            raise UserError("not even a batch of 1 fits in memory; raise --memory-cap or pick a smaller model")
        say(f"largest batch that fits: {batch_size}")

    settings = [Setting(batch_size, precision, compile_, channels_last)]
    if request.tune:
        settings = tune_grid(request, batch_size, device, info.conv)
    progress.set_total(len(settings))
    rows = []
    for setting in settings:
        warmup = request.warmup if request.warmup is not None else (10 if setting.compile else 3)
        if announce:
            say(f"measuring {describe_setting(setting)} ...")
        progress.start(describe_setting(setting))
        rows.append(measure(workload, setting, device, request.steps, warmup, request.repeats, budget_s=request.budget_s))
        progress.finish(f"{rows[-1]['samples_per_second']:,.1f} samples/s")
    pick = {}
    if request.tune:
        safe = [r for r in rows if r["loss_finite"]]
        rows = sorted(safe, key=lambda r: -r["samples_per_second"]) + [r for r in rows if not r["loss_finite"]]
        pick = fastest_pick(safe)

    result = result_object(rows, kind="train", interference=interference, spread="samples_per_second",
                           auto_batch=auto_batch, tuned=request.tune, **pick)
    return result, write_result(run_dir, "train", result)


def tune_grid(request: TrainBenchRequest, batch_size: int, device: torch.device, conv: bool) -> list[Setting]:
    """Every combination worth trying on this device; a setting the request gives pins its
    dimension. fp16 only on CUDA (CPUs emulate it), channels_last only for conv nets."""
    cuda = device.type == "cuda"
    precisions = [request.precision] if request.precision != "auto" else ["fp32", "bf16"] + (["fp16"] if cuda else [])
    compiles = [request.compile] if request.compile is not None else [False, True]
    layouts = [request.channels_last] if request.channels_last is not None else ([False, True] if conv else [False])
    batches = sorted({max(1, batch_size // 2), batch_size})
    return [Setting(b, p, c, cl) for b, p, c, cl in itertools.product(batches, precisions, compiles, layouts)]


def fastest_pick(safe: list[dict[str, Any]]) -> dict[str, Any]:
    """``fastest`` (the fastest safe row's setting) and ``tied``: when the runner-up's
    [p10, p90] samples/s overlaps the fastest's, no winner is named (``fastest`` null) and
    ``tied`` holds both settings; ``safe`` is sorted fastest first."""
    keys = ("batch_size", "precision", "compiled", "channels_last")
    settings = [{k: row[k] for k in keys} for row in safe[:2]]
    if len(safe) > 1 and overlap(safe[0], safe[1], "samples_per_second"):
        return {"fastest": None, "tied": settings}
    return {"fastest": settings[0] if settings else None, "tied": None}


def describe_setting(setting: Setting) -> str:
    return (f"batch {setting.batch_size}, {setting.precision}, {'compiled' if setting.compile else 'eager'}"
            f"{', channels_last' if setting.channels_last else ''}")
