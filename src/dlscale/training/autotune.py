"""Pick the fastest safe CPU training settings (bf16 autocast, channels_last) by measuring.

No fixed rule is right: on one AVX512-BF16 CPU, bf16 makes a ResNet step 2.5x faster
but a small GPT step 25% slower, and channels_last helps conv nets by 5% to 30%. So
when the user leaves them open, each candidate is timed over a few real training steps
(forward, loss, backward) on a copy of the model, the fastest is kept (bf16 only when
clearly faster, as it changes the numerics), and the answer is cached per machine
beside the measured peaks, so later runs on the same machine do not measure again
(an answer timed while the machine was busy is measured again once it is quiet).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.hardware import contention, peaks
from dlscale.runs.files import write_json
from dlscale.models.flops import loss_fn

PROBE_SAMPLES = 64  # samples of the run's batch timed per step (small batches mislead: overhead dominates)
TIMED_STEPS = 3  # after one warm-up step, per variant
FIRST_STEP_LIMIT_S = 5.0  # a first step slower than this: measuring the rest would cost too long
HOPELESS_WARMUP = 3.0  # a later variant's warm-up step over this many times the best median: not timed further
SCOUT_SAMPLES = 8  # when steps are slow, a later variant is first timed on this many samples
SCOUT_ABOVE_S = 1.0  # ... when its time limit is above this (per-step overhead is then negligible)
BF16_MARGIN = 0.10  # bf16 must be at least this much faster than the best fp32 variant
CHANNELS_LAST_MARGIN = 0.03  # channels_last must beat NCHW of its precision by this (noise)


@dataclass(frozen=True)
class Choice:
    precision: str  # "fp32" or "bf16"
    channels_last: bool
    step_ms: dict[str, float]  # variant label -> median ms of a step; empty when nothing was measured
    cached: bool  # read from the cache file


def _label(precision: str, channels_last: bool) -> str:
    return precision + ("+channels_last" if channels_last else "")


def median_step_ms(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    channels_last: bool,
    warmup_limit_s: float = math.inf,
    timed_steps: int = TIMED_STEPS,
) -> float:
    """Median ms of a training step (no optimizer) on a copy of ``model``, after a warm-up
    step; only the warm-up's ms when that one took longer than ``warmup_limit_s``."""
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    warmup = step()
    if warmup > warmup_limit_s:
        return warmup * 1e3
    return statistics.median(step() for _ in range(timed_steps)) * 1e3


def _decide(ms: dict[tuple[str, bool], float]) -> tuple[str, bool]:
    """The fastest variant, but bf16 only when >= 10% faster than the best fp32 variant and
    channels_last only when >= 3% faster than NCHW at the same precision."""

    def best_layout(precision: str) -> tuple[str, bool]:
        nchw, cl = ms.get((precision, False)), ms.get((precision, True))
        if cl is not None and (nchw is None or cl <= (1 - CHANNELS_LAST_MARGIN) * nchw):
            return precision, True
        return precision, False

    precisions = {p for p, _ in ms}
    if precisions == {"fp32", "bf16"}:
        bf16 = best_layout("bf16")
        fp32_best = min(v for (p, _), v in ms.items() if p == "fp32")
        return bf16 if ms[bf16] <= (1 - BF16_MARGIN) * fp32_best else best_layout("fp32")
    return best_layout(precisions.pop())


def cache_path() -> Path:
    """settings-<host>-<digest>.json: the peaks cache's name and fingerprint, so another
    CPU, thread count or torch version gets another file."""
    peaks_path = peaks.cache_path(peaks.fingerprint())
    return peaks_path.with_name("settings-" + peaks_path.name.removeprefix("peaks-"))


def _read_choices(path: Path) -> dict[str, Any]:
    """The cached choices; empty when the file is missing, unreadable or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    choices = data.get("choices") if isinstance(data, dict) else None
    return choices if isinstance(choices, dict) else {}


def _cached_choice(path: Path, key: str) -> Choice | None:
    entry = _read_choices(path).get(key)
    if not isinstance(entry, dict):
        return None
    precision, channels_last, step_ms = entry.get("precision"), entry.get("channels_last"), entry.get("step_ms")
    if precision not in ("fp32", "bf16") or not isinstance(channels_last, bool) or not isinstance(step_ms, dict):
        return None
    if entry.get("busy") and not contention.machine_busy():
        return None  # timed while other work loaded the machine: measure again now that it is quiet
    return Choice(precision, channels_last, step_ms, cached=True)


def choose_cpu_settings(
    model: torch.nn.Module,
    example_x: torch.Tensor,
    example_y: torch.Tensor,
    *,
    key: str,
    precision: str,
    channels_last: bool | None,
    conv: bool,
) -> Choice:
    """The fastest safe precision and memory format for training ``model`` on this CPU.

    ``precision`` "auto" tries fp32 and bf16, "fp32"/"bf16" is kept; ``channels_last``
    None tries both layouts when ``conv`` (NCHW otherwise), True/False is kept. Several
    candidates are timed on a copy of the model with the first ``PROBE_SAMPLES`` samples
    of ``example_x``/``example_y`` (a real batch of the run) and the answer cached per
    machine under ``key`` (model and data, say) with the user's settings and probe shape.
    ``model`` and torch's RNG are left as they were.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16 for a CPU, not {precision!r}")
    precisions = ("fp32", "bf16") if precision == "auto" else (precision,)
    layouts = (False, True) if channels_last is None and conv else (bool(channels_last),)
    variants = [(p, cl) for p in precisions for cl in layouts]  # the baseline first
    if len(variants) == 1:
        return Choice(*variants[0], step_ms={}, cached=False)

    n = min(len(example_x), PROBE_SAMPLES)
    x, y = example_x[:n], example_y[:n]
    entry_key = "|".join([key, precision, str(channels_last), "x".join(map(str, x.shape))])
    path = cache_path()
    found = _cached_choice(path, entry_key)
    if found is not None:
        return found

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    # One process measures at a time (workers of one node start together): the others
    # wait, then read its answer instead of measuring against it. A holder that never lets
    # go (a stopped process) is waited for only so long: then this one measures alone and
    # leaves the file to it.
    with contention.machine_lock(path) as locked:
        found = _cached_choice(path, entry_key)
        if found is not None:
            return found
        ms: dict[tuple[str, bool], float] = {}
        print("dlscale: timing " + ", ".join(_label(p, cl) for p, cl in variants) + " training steps to pick this "
              "CPU's fastest settings (once per machine and model)", file=sys.stderr, flush=True)
        with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's RNG
            hopeless: set[str] = set()
            for i, (p, cl) in enumerate(variants):
                if p in hopeless:
                    continue  # the other layout of a hopeless precision is not tried
                # a variant whose warm-up already takes several times the best median cannot be
                # the faster one: its timed steps are skipped, and so is its precision's other
                # layout (bf16 on a CPU without bf16 units: 16-25x fp32's step here)
                limit = FIRST_STEP_LIMIT_S if i == 0 else HOPELESS_WARMUP * min(ms.values()) / 1e3
                if i > 0 and limit > SCOUT_ABOVE_S and n > SCOUT_SAMPLES:
                    # slow steps: a step on a few samples first, scaled up, so that a hopeless
                    # variant (bf16 without bf16 units: tens of seconds a step) costs seconds
                    k = SCOUT_SAMPLES
                    scouted = median_step_ms(model, x[:k], y[:k], p, cl, timed_steps=1) * n / k
                    if scouted > limit * 1e3:
                        ms[(p, cl)] = scouted
                        hopeless.add(p)
                        continue
                ms[(p, cl)] = median_step_ms(model, x, y, p, cl, warmup_limit_s=limit)
                if i == 0 and ms[(p, cl)] > FIRST_STEP_LIMIT_S * 1e3:
                    break  # too slow to try every variant: keep the baseline
                if i > 0 and ms[(p, cl)] > limit * 1e3:
                    hopeless.add(p)
        chosen = variants[0] if len(ms) == 1 else _decide(ms)
        step_ms = {_label(p, cl): round(v, 3) for (p, cl), v in ms.items()}
        if not locked:
            return Choice(*chosen, step_ms=step_ms, cached=False)
        try:
            choices = _read_choices(path)  # other keys, possibly written by another process
            choices[entry_key] = {
                "precision": chosen[0], "channels_last": chosen[1], "step_ms": step_ms, "busy": contention.machine_busy(),
            }
            write_json(path, {"choices": choices})
        except OSError:
            pass  # a read-only cache folder: the choice stands, it is only not kept
    return Choice(*chosen, step_ms=step_ms, cached=False)
