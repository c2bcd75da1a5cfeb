"""How ``dlscale serve`` runs its model, decided once at start-up and measured where no rule
is right, as training's settings are (``training.settings``):

- precision: a named one is kept (checked against the device). ``auto`` times the run's
  precision and the other of fp32/bf16 (fp16 too on a GPU without bf16) at the serving
  batch size, and takes a lower precision only when it is at least 10% faster (training's
  margin) and gives the same class as fp32 for at least 99% of a batch of inputs;
- compile: ``on`` compiles (on CUDA with CUDA graphs, torch.compile's reduce-overhead);
  ``auto`` compiles on CUDA when the compiled model measures at least 10% faster, and never
  on a CPU (compiling costs a start-up of tens of seconds that small models rarely earn
  back: as training decides). A compiled model sees only a few batch shapes: every batch is
  padded to the next power of two up to ``max_batch_size``, and each of those shapes is
  compiled during start-up, not on a client's request.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dlscale.errors import UserError
from dlscale.hardware.device import synchronize
from dlscale.inference.model import Model
from dlscale.training.settings import check_precision

MARGIN = 0.10  # a lower precision or a compiled model must be at least this much faster
AGREEMENT = 0.99  # ... and a lower precision must give fp32's class for this share of samples
TIMED_BATCHES = 10
TIMED_BATCH_LIMIT = 64  # the settings are timed at the serving batch size, up to this many samples
PROBE_SAMPLES = 256


@dataclass
class ServingSettings:
    precision: str
    compiled: bool
    buckets: tuple[int, ...] | None  # batch shapes a compiled model runs (padded to), else None
    cuda_graphs: bool = False  # compiled with reduce-overhead: each call starts a new graph step
    measured_ms: dict[str, float] = field(default_factory=dict)  # "<precision> <eager|compiled>, batch N": median ms
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "compiled": self.compiled, "buckets": list(self.buckets) if self.buckets else None,
                "measured_ms": self.measured_ms, "reason": self.reason}


def check_choices(precision: str, compile: str) -> None:
    """The values --precision and --compile take, checked before anything is loaded."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"--precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if compile not in ("auto", "on", "off"):
        raise UserError(f"--compile must be auto, on or off, got {compile!r}")


def buckets_for(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including ``max_batch_size``."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return tuple(sizes)


def resolve(model: Model, max_batch_size: int, precision: str = "auto", compile: str = "auto",
            note: Callable[[str], None] | None = None) -> ServingSettings:
    """Decide, apply to ``model`` (its precision, its module compiled) and return the settings."""
    check_choices(precision, compile)
    if model.is_language_model:  # prompts of any length: no fixed batch shape to measure or compile for
        if compile == "on":
            raise UserError("--compile on is for fixed-shape models; a language model serves uncompiled")
        if precision != "auto":
            model.precision = check_precision(precision, model.device)
        return ServingSettings(model.precision, False, None, reason="language model: eager, in the run's precision or the one asked")
    timed = min(max_batch_size, TIMED_BATCH_LIMIT)
    batch = _probe_batch(model, max_batch_size)
    measured: dict[str, float] = {}
    reasons = []
    if precision == "auto":
        chosen, why = _choose_precision(model, batch, timed, measured)
        reasons.append(why)
    else:
        chosen = check_precision(precision, model.device)
        reasons.append(f"precision {chosen} as asked")
    model.precision = chosen
    compiled = compile == "on" or (compile == "auto" and model.device.type == "cuda")
    buckets = None
    if compiled:
        buckets = buckets_for(max_batch_size)
        size = next(b for b in buckets if b >= timed)  # a shape the compiled model runs
        eager_ms = _time(model, batch[:size])
        eager_module = model.module
        model.module = _compile(eager_module, model.device)
        if note:
            note(f"compiling for batch sizes {', '.join(map(str, buckets))}")
        for bucket in buckets:  # every shape compiled now, not on a client's request
            model.outputs_of(batch[:bucket], prepared=True, batch_size=bucket)
        compiled_ms = _time(model, batch[:size])
        measured[f"{chosen} eager, batch {size}"] = eager_ms
        measured[f"{chosen} compiled, batch {size}"] = compiled_ms
        if compile == "auto" and compiled_ms > (1 - MARGIN) * eager_ms:
            model.module, compiled, buckets = eager_module, False, None
            reasons.append(f"eager: compiled {compiled_ms:.2f} ms vs eager {eager_ms:.2f} ms per batch of {size}")
        else:
            reasons.append(f"compiled: {compiled_ms:.2f} ms vs eager {eager_ms:.2f} ms per batch of {size}")
    else:
        reasons.append("eager" + (" (compile off)" if compile == "off" else " (compiling does not pay on a CPU)"))
    return ServingSettings(chosen, compiled, buckets, compiled and model.device.type == "cuda", measured, "; ".join(reasons))


def run_padded(model: Model, x: torch.Tensor, settings: ServingSettings) -> torch.Tensor:
    """The model's outputs for ``x``; a compiled model gets ``x`` padded (repeating its last
    sample) to the next bucket, and the padding's rows are dropped. A request larger than the
    largest bucket runs in chunks of it."""
    n, buckets = len(x), settings.buckets
    if buckets is not None:
        largest = buckets[-1]
        size = next((b for b in buckets if b >= n), -(-n // largest) * largest)
        if size > n:
            x = torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])])
    if settings.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    chunk = buckets[-1] if buckets is not None else max(len(x), 1)
    return model.outputs_of(x, prepared=True, batch_size=chunk)[:n]


# --------------------------------------------------------------------------- measuring


def _probe_batch(model: Model, max_batch_size: int) -> torch.Tensor:
    """PROBE_SAMPLES (at least a full batch) of standard-normal samples in the model's input
    shape: a standardised input's scale, the model's layout."""
    generator = torch.Generator().manual_seed(0)
    n = max(PROBE_SAMPLES, max_batch_size)
    return torch.randn((n, *model.spec["input_shape"]), generator=generator)


def _time(model: Model, x: torch.Tensor) -> float:
    """Median milliseconds of one batch, after one warm-up batch."""
    model.outputs_of(x, prepared=True, batch_size=len(x))
    times = []
    for _ in range(TIMED_BATCHES):
        synchronize(model.device)
        start = time.perf_counter()
        model.outputs_of(x, prepared=True, batch_size=len(x))
        synchronize(model.device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _choose_precision(model: Model, probe: torch.Tensor, max_batch_size: int, measured: dict[str, float]) -> tuple[str, str]:
    """The fastest of fp32 and a lower precision (and the run's own), a lower one only when it
    is MARGIN faster and agrees with fp32 on the probe."""
    lower = "bf16" if model.device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    candidates = [p for p in dict.fromkeys(["fp32", lower, model.precision]) if _supported(p, model.device)]
    batch = probe[:max_batch_size]
    outputs = {}
    for precision in candidates:
        model.precision = precision
        measured[f"{precision} eager, batch {len(batch)}"] = _time(model, batch)
        outputs[precision] = model.outputs_of(probe, prepared=True, batch_size=max_batch_size)
    fp32_ms = measured[f"fp32 eager, batch {len(batch)}"]
    best, why = "fp32", f"fp32: {fp32_ms:.2f} ms per batch of {max_batch_size}"
    for precision in candidates[1:]:
        ms = measured[f"{precision} eager, batch {len(batch)}"]
        agreement = _agreement(outputs[precision], outputs["fp32"], model.is_regression)
        if ms > (1 - MARGIN) * fp32_ms:
            why = f"fp32: {precision} ({ms:.2f} ms) is not 10% faster than fp32 ({fp32_ms:.2f} ms per batch of {max_batch_size})"
        elif agreement < AGREEMENT:
            why = f"fp32: {precision} is faster but agrees with fp32 on only {100 * agreement:.1f}% of {len(probe)} samples"
        elif ms < measured[f"{best} eager, batch {len(batch)}"]:
            best = precision
            why = f"{precision}: {fp32_ms / ms:.2f}x fp32's speed, agreeing with fp32 on {100 * agreement:.1f}% of {len(probe)} samples"
    return best, why


def _agreement(outputs: torch.Tensor, reference: torch.Tensor, regression: bool) -> float:
    """The share of samples where ``outputs`` agree with fp32's: the same class, or for
    regression values within 1% of the spread of fp32's values."""
    if not regression:
        return float((outputs.argmax(-1) == reference.argmax(-1)).double().mean())
    spread = float(reference.std()) or 1.0
    close = ((outputs - reference).abs().reshape(len(outputs), -1) <= 0.01 * spread).all(dim=1)
    return float(close.double().mean())


def _supported(precision: str, device: torch.device) -> bool:
    try:
        check_precision(precision, device)
        return True
    except UserError:
        return False


def _compile(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    if device.type == "cuda":
        return torch.compile(module, mode="reduce-overhead", dynamic=False)
    return torch.compile(module, dynamic=False)
