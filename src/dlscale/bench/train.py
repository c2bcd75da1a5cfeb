"""Training throughput on synthetic data, in the manner of tf_cnn_benchmarks and
Horovod's synthetic benchmark: one random batch already on the device, the real
training step (the trainer's own ``train_step``), warm-up steps timed apart, then
several repeats of timed steps reported as median and spread.

``find_max_batch`` finds the largest batch that fits (doubling, then bisection),
recovering from CUDA out-of-memory and holding the CPU under a memory cap.
``tune`` tries precision x compile x channels_last x batch size and names the fastest
setting whose loss stayed finite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dlscale.training.allocator import keep_freed_memory
from dlscale.bench.common import median_spread
from dlscale.bench.reliability import DEFAULT_BUDGET_S, repeat, spread_fields
from dlscale.training.config import TrainConfig
from dlscale.hardware.device import peak_memory_bytes, reset_peak_memory, synchronize
from dlscale.models.flops import count as count_flops
from dlscale.hardware.mfu import utilisation
from dlscale.hardware.peaks import peak_for
from dlscale.models import ModelInfo, build_model
from dlscale.training.step import build_stepper, train_step
from dlscale.data.synthetic import parse_shape
from dlscale.errors import UserError
from dlscale.training.autotune import PROBE_SAMPLES
from dlscale.training.settings import Settings, data_spec, probe_key, resolve


@dataclass(frozen=True)
class Setting:
    batch_size: int
    precision: str  # fp32 | bf16 | fp16 (resolved)
    compile: bool
    channels_last: bool


@dataclass(frozen=True)
class Workload:
    """What is trained: a zoo model and the shape of one synthetic sample."""

    info: ModelInfo
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def tokens(self) -> bool:
        return self.info.kind == "tokens"

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(self.info.name, self.input_shape, self.num_classes)

    def batch(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch, made once on the device: the benchmark measures the step, not data loading."""
        generator = torch.Generator().manual_seed(0)
        if self.tokens:
            x = torch.randint(0, self.num_classes, (size, *self.input_shape), generator=generator)
            return x.to(device), torch.roll(x, -1, dims=1).to(device)
        x = torch.randn(size, *self.input_shape, generator=generator)
        return x.to(device), torch.randint(0, self.num_classes, (size,), generator=generator).to(device)


def workload_for(info: ModelInfo, data: str) -> Workload:
    """The model and its synthetic sample shape (the model's own, or --data synthetic:SHAPE)."""
    kind, shape = parse_shape(data, data_spec(info))
    if kind != info.kind:
        wanted = "synthetic:SEQ_LEN (token sequences)" if info.kind == "tokens" else "synthetic:CxHxW (images)"
        raise UserError(f"{info.name} needs {wanted}, not --data {data}")
    return Workload(info=info, input_shape=tuple(shape), num_classes=info.default_num_classes)


def resolve_settings(
    workload: Workload, device: torch.device, batch_size: int | None, precision: str = "auto",
    compile: bool | None = None, channels_last: bool | None = None,
) -> Settings:
    """The settings ``dlscale train`` would use for this model on ``device`` (the same
    resolver; on a CPU the same probe, on a batch of this shape), where the user left them open."""
    probe = workload.batch(min(batch_size or PROBE_SAMPLES, PROBE_SAMPLES), torch.device("cpu"))
    return resolve(
        device, workload.build(), probe, key=probe_key(workload.info.name, workload.input_shape, workload.num_classes),
        precision=precision, compile=compile, channels_last=channels_last, conv=workload.info.conv,
    )


def stepper_for(workload: Workload, setting: Setting, device: torch.device):
    config = TrainConfig(
        model=workload.info.name, batch_size=setting.batch_size, precision=setting.precision,
        compile=setting.compile, channels_last=setting.channels_last, lr=1e-4, weight_decay=0.0,
        warmup_steps=0, schedule="constant",
    )
    return build_stepper(config, workload.build(), device, total_steps=1)


def measure(
    workload: Workload, setting: Setting, device: torch.device, steps: int, warmup: int, repeats: int | str,
    on_step: Callable[[], None] | None = None, budget_s: float = DEFAULT_BUDGET_S,
) -> dict[str, Any]:
    """One benchmark row: warm-up timed apart, then ``repeats`` x ``steps`` timed steps
    (``"auto"``: until their median settles, within ``budget_s``; see reliability.repeat)."""
    peak = peak_for(device, setting.precision)  # before timing: the first run on a machine measures its peaks
    model = workload.build()
    x, y = workload.batch(setting.batch_size, device)
    flops = count_flops(model, x[:2].cpu(), y[:2].cpu())
    stepper = stepper_for(workload, setting, device)
    with keep_freed_memory(device.type == "cpu"):  # as training runs it: see dlscale.training.allocator
        warmup_s, step_times, losses, stable = _time_steps(stepper, x, y, device, steps, warmup, repeats, on_step, budget_s)
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    median, spread = median_spread(step_times)
    samples_per_second = setting.batch_size / median
    flops_per_sample = flops.train_per_sample if flops else None
    usage = utilisation(flops_per_sample, samples_per_second, device, setting.precision, peak=peak)
    seq_len = workload.input_shape[0] if workload.tokens else None
    return {
        "model": workload.info.name,
        "batch_size": setting.batch_size,
        "precision": setting.precision,
        "compiled": setting.compile,
        "channels_last": setting.channels_last,
        "device": str(device),
        "samples_per_second": samples_per_second,
        **spread_fields("samples_per_second", [setting.batch_size / t for t in step_times]),
        "tokens_per_second": samples_per_second * seq_len if seq_len else None,
        "seq_len": seq_len,
        "flops_per_sample": flops_per_sample,
        "flops_per_token": flops_per_sample / seq_len if seq_len and flops_per_sample else None,
        "achieved_flops_per_second": usage["achieved_flops_per_second"],
        "mfu": usage["mfu_datasheet"],
        "mfu_measured_peak": usage["mfu_measured_peak"],
        "datasheet_peak_flops_per_second": usage["datasheet_peak_flops_per_second"],
        "measured_peak_flops_per_second": usage["measured_peak_flops_per_second"],
        "peak_memory_bytes": peak_memory_bytes(device),
        "step_time_median_s": median,
        "step_time_spread_s": spread,
        "step_times_s": step_times,
        "warmup_s": warmup_s,
        "steps": steps,
        "repeats": len(step_times),
        "stable": stable,  # --repeats auto: whether the median settled within the budget; null for a fixed count
        "loss_finite": finite,
    }


def _time_steps(stepper, x, y, device, steps: int, warmup: int, repeats: int | str, on_step, budget_s: float):
    """Warm-up steps timed apart, then ``repeats`` x ``steps`` timed steps: (warm-up s, s per
    step per repeat, losses, whether an auto count settled)."""
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):  # compilation, autotuning, first allocations
        train_step(stepper, x, y)
        if on_step:
            on_step()
    synchronize(device)
    warmup_s = time.perf_counter() - start

    losses = []

    def one_repeat() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            losses.append(train_step(stepper, x, y))
            if on_step:
                on_step()
        synchronize(device)  # the clock reads only finished work
        return (time.perf_counter() - start) / steps

    step_times, stable = repeat(one_repeat, repeats, budget_s)
    return warmup_s, step_times, losses, stable


def fits(workload: Workload, setting: Setting, device: torch.device, memory_cap: int | None) -> bool:
    """Whether two training steps at this batch run within the device's memory (or the CPU cap)."""
    try:
        stepper = stepper_for(workload, setting, device)
        x, y = workload.batch(setting.batch_size, device)
        reset_peak_memory(device)
        for _ in range(2):
            train_step(stepper, x, y)
        synchronize(device)
    except torch.OutOfMemoryError:
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cpu" and memory_cap is not None:
        peak = peak_memory_bytes(device)
        return peak is None or peak <= memory_cap
    return True


def find_max_batch(fits_at: Callable[[int], bool], start: int = 1, limit: int = 65536) -> int | None:
    """The largest batch for which ``fits_at`` holds: double until it fails, then bisect."""
    if not fits_at(start):
        return None
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(good * 2, limit)
        if fits_at(trial):
            good = trial
        else:
            bad = trial
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if fits_at(middle):
            good = middle
        else:
            bad = middle
    return good
