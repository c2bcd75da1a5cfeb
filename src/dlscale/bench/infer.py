"""Inference speed and latency: predictions/s and latency p50/p90/p99 per batch size,
precision and mode, with a trained run's test accuracy beside each setting.

    dlscale bench infer --model cnn --batch-sizes 1,8,64 --precisions fp32,bf16
    dlscale bench infer --run runs/<run> --precisions fp32,bf16,int8 --modes eager,compiled

How one setting (precision x mode) is measured:

- The model is cast once per precision, as deployments run it: ``eval()``, then
  ``.to(bf16|fp16)`` with inputs of the same dtype (pure low precision, no autocast);
  ``int8`` is ``torch.ao.quantization.quantize_dynamic`` of the ``nn.Linear`` layers of
  a fp32 copy (int8 weights, activations quantized per batch; convolutions and every
  other layer stay fp32), CPU only. Conv nets on CUDA run channels_last.
- ``compiled`` is ``torch.compile`` with static shapes, compiled afresh for each batch
  size; on CUDA with ``mode="reduce-overhead"``, which replays CUDA graphs.
- Everything runs under ``torch.inference_mode()`` on synthetic inputs of the model's
  input shape (token ids for language models): warm-up batches first (compilation and
  autotuning land there, reported as ``warmup_seconds``), then at least 50 timed
  batches, each timed on its own with the device synchronised before the clock is read;
  ``repeats`` passes of them (or, with "auto", until their median settles) give the
  spread of predictions/s (``predictions_per_second_p10``, ``_p90``, ``_cv``).
- ``predictions_per_second`` = batch_size / mean latency over the timed batches; the
  latency percentiles are over the same batches (linear between ranks, numpy's default).
- With a trained run, the test split is evaluated once per precision x mode (argmax
  accuracy; next-token accuracy for language models) and repeated in every row of it.

A setting the machine cannot do (fp16 on a CPU, int8 on a GPU, a failed compile) is a
row with ``skipped`` set to the reason and null numbers, never a silently missing row.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlscale.data.batches import eval_batches
from dlscale.data.loader import Feed
from dlscale.data.preprocess import pixels_to_input
from dlscale.bench.common import percentile
from dlscale.bench.reliability import DEFAULT_BUDGET_S, repeat, spread_fields
from dlscale.bench.targets import Target
from dlscale.hardware.device import DTYPES, describe, synchronize
from dlscale.errors import UserError
from dlscale.models.flops import count as count_flops

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
MODES = ("eager", "compiled")
MIN_BATCHES = 50  # latency percentiles up to p99 need at least this many timed batches
EVAL_BATCH = 64  # batch size of the test-accuracy pass (the trainer's default batch)
INT8_NOTE = "int8: nn.Linear layers quantized dynamically (int8 weights); convolutions and other layers stay fp32"

Note = Callable[[str], None]


@dataclass(frozen=True)
class InferSettings:
    """What to sweep; checked on construction so a bad value fails before any work."""

    batch_sizes: tuple[int, ...] = (1, 8, 64)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    modes: tuple[str, ...] = ("eager",)
    batches: int = MIN_BATCHES  # timed batches per setting
    warmup: int = 5  # untimed batches before them
    repeats: int | str = 1  # passes of ``batches`` timed batches (the command asks for 3), or "auto"
    budget_s: float = DEFAULT_BUDGET_S  # per setting, for repeats="auto"

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError(f"--batch-sizes must be positive integers such as 1,8,64; got {self.batch_sizes}")
        for name, values, choices in (("precisions", self.precisions, PRECISIONS), ("modes", self.modes, MODES)):
            unknown = [v for v in values if v not in choices]
            if unknown or not values:
                raise UserError(f"--{name}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; choose from {','.join(choices)}")
        if self.batches < MIN_BATCHES:
            raise UserError(
                f"--batches must be at least {MIN_BATCHES} (latency percentiles up to p99 need that many timed batches); got {self.batches}"
            )
        if self.repeats != "auto" and (not isinstance(self.repeats, int) or self.repeats < 1):
            raise UserError(f"--repeats must be a whole number of at least 1 or 'auto'; got {self.repeats!r}")
        if self.warmup < 1:
            raise UserError(f"--warmup must be at least 1 (the first batch allocates and compiles); got {self.warmup}")


def default_precisions(device: torch.device) -> tuple[str, ...]:
    return ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")


# --------------------------------------------------------------------------- the sweep


def benchmark(
    target: Target,
    settings: InferSettings,
    device: torch.device,
    *,
    note: Note | None = None,
    step: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per precision x mode x batch size, in that nesting order. ``note`` hears
    each skip as it happens; ``step`` names each row's work as it starts (a progress bar)."""
    note = note or (lambda text: None)
    step = step or (lambda label: None)
    channels_last = device.type == "cuda" and target.conv
    base = target.model.eval().to(device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    flops = forward_flops(target)
    if "int8" in settings.precisions and device.type == "cpu":
        note(INT8_NOTE)

    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for precision in settings.precisions:
            for mode in settings.modes:
                setting = f"{precision} {mode}"
                reason = unsupported(precision, device)
                model, accuracy, broke = None, None, False
                if reason is None:
                    if target.test is not None:
                        step(f"{setting} test accuracy")
                    try:
                        model = cast(base, precision)
                        if target.test is not None:
                            accuracy = evaluate_accuracy(target, model, precision, mode, device, channels_last)
                    except Exception as exc:  # the machine or torch cannot run this setting
                        reason = failure(exc)
                if reason is not None:
                    note(f"skipped {setting}: {reason}")
                for batch_size in settings.batch_sizes:
                    step(f"{setting} batch {batch_size}")
                    row = None
                    if reason is None:
                        try:
                            row = measure(target, model, precision, mode, batch_size, settings, device, channels_last)
                            if row["graph_breaks"] and not broke:
                                broke = True
                                note(f"{setting}: torch.compile split the model at graph breaks "
                                     f"({row['graph_break_reason']}); those parts run eager")
                        except Exception as exc:
                            row_reason = failure(exc)
                            note(f"skipped {setting} batch {batch_size}: {row_reason}")
                            if not isinstance(exc, torch.OutOfMemoryError):
                                reason = row_reason  # a failed compile fails every batch size: skip the rest
                            else:
                                torch.cuda.empty_cache()
                            row = skipped_row(batch_size, precision, mode, device, row_reason)
                    rows.append(
                        finish_row(row or skipped_row(batch_size, precision, mode, device, reason), target, flops, accuracy)
                    )
                del model
    return rows


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why this machine cannot run the setting, known before trying; None if it may."""
    if precision == "fp16" and device.type == "cpu":
        return "fp16 is not run on CPUs (torch's CPU half-precision kernels are mostly emulated); use bf16 or int8 on CPU"
    if precision == "int8":
        if device.type != "cpu":
            return "int8 dynamic quantization (torch.ao quantize_dynamic) runs on CPU only; use --device cpu"
        if not [e for e in torch.backends.quantized.supported_engines if e != "none"]:
            return "this torch build has no quantized CPU engine (fbgemm, x86, onednn or qnnpack)"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use fp16"
    return None


def failure(exc: BaseException) -> str:
    """One line naming what went wrong (compiler errors run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "no message")
    return f"{type(exc).__name__}: {text[:240]}"


def cast(model: nn.Module, precision: str) -> nn.Module:
    """The model at ``precision``: fp32 as is, bf16/fp16 a cast copy, int8 a dynamically
    quantized copy (CPU) of the fp32 model."""
    if precision == "fp32":
        return model
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            fp32 = copy.deepcopy(model).to("cpu", torch.float32).eval()
            return torch.ao.quantization.quantize_dynamic(fp32, {nn.Linear}, dtype=torch.qint8)
    return copy.deepcopy(model).to(DTYPES[precision])


def runner(model: nn.Module, mode: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable that runs one batch: the model, or a fresh static-shape compile of it.

    Each compiled runner starts from a reset compiler cache, so one graph serves one
    batch shape (no dynamic-shape graph, no hitting the recompile limit and falling
    back to eager unseen).
    """
    if mode == "eager":
        return model
    torch._dynamo.reset()
    if device.type == "cuda":
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)

        def step(x: torch.Tensor) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new inference step
            return compiled(x)

        return step
    return torch.compile(model, dynamic=False)


def compile_mode(mode: str, device: torch.device) -> str | None:
    if mode == "eager":
        return None
    return "reduce-overhead" if device.type == "cuda" else "default"


def input_dtype(precision: str) -> torch.dtype:
    return DTYPES.get(precision, torch.float32)  # int8 takes fp32 inputs


def synthetic_batch(target: Target, batch_size: int, precision: str, device: torch.device, channels_last: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if target.kind == "tokens":
        x = torch.randint(0, target.num_classes, (batch_size, *target.input_shape), generator=generator)
    else:
        x = torch.randn((batch_size, *target.input_shape), generator=generator).to(input_dtype(precision))
    return place(x, device, channels_last)


def place(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def measure(
    target: Target, model: nn.Module, precision: str, mode: str, batch_size: int,
    settings: InferSettings, device: torch.device, channels_last: bool,
) -> dict[str, Any]:
    """Warm-up, then ``settings.repeats`` passes of ``settings.batches`` batches, each batch
    timed on its own; the passes' predictions/s give the row's spread."""
    device = device if precision != "int8" else torch.device("cpu")
    call = runner(model, mode, device)
    x = synthetic_batch(target, batch_size, precision, device, channels_last)
    breaks_before = graph_breaks()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(settings.warmup):
        call(x)
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    breaks = {k: n - breaks_before.get(k, 0) for k, n in graph_breaks().items() if n > breaks_before.get(k, 0)}
    latencies: list[float] = []

    def one_pass() -> float:
        times = []
        for _ in range(settings.batches):
            start = time.perf_counter()
            call(x)
            synchronize(device)  # the batch is done before the clock is read
            times.append(time.perf_counter() - start)
        latencies.extend(times)
        return batch_size / statistics.fmean(times)

    rates, stable = repeat(one_pass, settings.repeats, settings.budget_s)
    mean = statistics.fmean(latencies)
    return {
        "batch_size": batch_size,
        "precision": precision,
        "device": describe(device),
        "mode": mode,
        "predictions_per_second": batch_size / mean,
        **spread_fields("predictions_per_second", rates),
        "repeats": len(rates),
        "stable": stable,
        "latency_p50_ms": 1e3 * percentile(latencies, 50),
        "latency_p90_ms": 1e3 * percentile(latencies, 90),
        "latency_p99_ms": 1e3 * percentile(latencies, 99),
        "latency_mean_ms": 1e3 * mean,
        "timed_batches": len(latencies),
        "warmup_batches": settings.warmup,
        "warmup_seconds": warmup_seconds,
        "compile_mode": compile_mode(mode, device),
        "graph_breaks": sum(breaks.values()) if mode == "compiled" else None,
        "graph_break_reason": next(iter(breaks), "").strip().splitlines()[0] if breaks else None,
        "skipped": None,
    }


def skipped_row(batch_size: int, precision: str, mode: str, device: torch.device, reason: str) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "precision": precision,
        "device": describe(device),
        "mode": mode,
        "predictions_per_second": None,
        **spread_fields("predictions_per_second", []),
        "repeats": 0,
        "stable": None,
        "latency_p50_ms": None,
        "latency_p90_ms": None,
        "latency_p99_ms": None,
        "latency_mean_ms": None,
        "timed_batches": 0,
        "warmup_batches": 0,
        "warmup_seconds": None,
        "compile_mode": compile_mode(mode, device),
        "graph_breaks": None,
        "graph_break_reason": None,
        "skipped": reason,
    }


def finish_row(row: dict[str, Any], target: Target, flops: int | None, accuracy: float | None) -> dict[str, Any]:
    """Add what does not depend on the timing: accuracy, FLOPs, tokens/s for language models."""
    done = row["skipped"] is None
    rate = row["predictions_per_second"]
    row["test_accuracy"] = accuracy if done else None
    row["flops_per_prediction"] = flops
    row["achieved_flops_per_second"] = flops * rate if flops and done else None
    row["seq_len"] = target.input_shape[0] if target.kind == "tokens" else None
    row["tokens_per_second"] = rate * target.input_shape[0] if target.kind == "tokens" and done else None
    notes = [INT8_NOTE] if row["precision"] == "int8" else []
    if row["graph_breaks"]:
        notes.append(f"torch.compile split the model at {row['graph_breaks']} graph break(s) "
                     f"({row['graph_break_reason']}); those parts run eager")
    row["note"] = "; ".join(notes) or None
    return row


def graph_breaks() -> dict[str, int]:
    """torch.compile's running count of graph breaks by reason (a break means part of the
    model runs eager, so "compiled" would overstate what ran)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo
        return {}
    return dict(counters["graph_break"])


def forward_flops(target: Target) -> int | None:
    """Forward FLOPs per prediction, counted by FlopCounterMode on a meta copy."""
    x = synthetic_batch(target, 2, "fp32", torch.device("cpu"), channels_last=False)
    y = torch.zeros(x.shape if target.kind == "tokens" else (2,), dtype=torch.int64)
    counted = count_flops(target.model, x, y)
    return counted.forward_per_sample if counted else None


def evaluate_accuracy(
    target: Target, model: nn.Module, precision: str, mode: str, device: torch.device, channels_last: bool
) -> float | None:
    """Argmax accuracy over the test split (every token's next-token prediction for
    language models), with the model at this precision and mode."""
    dataset = target.test
    if dataset is None or len(dataset) == 0:
        return None
    device = device if precision != "int8" else torch.device("cpu")
    call = runner(model, mode, device)
    pad = mode == "compiled"  # one batch shape: the last batch is padded, not recompiled
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for x, y in eval_batches(Feed(dataset), EVAL_BATCH):
        n = len(y)
        if getattr(dataset, "pixels", False):  # image folders deliver uint8 pixels
            x = pixels_to_input(x)
        if pad and n < EVAL_BATCH:
            x = torch.cat([x, x.new_zeros((EVAL_BATCH - n, *x.shape[1:]))])
        if x.is_floating_point():
            x = x.to(input_dtype(precision))
        logits = call(place(x, device, channels_last))[:n]
        y = y.to(device)
        correct += (logits.reshape(-1, logits.shape[-1]).argmax(-1) == y.reshape(-1)).sum()
        total += y.numel()
    return int(correct) / total
