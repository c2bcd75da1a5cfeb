"""What each result key means to a reader: its label, unit, group and formatter, in one table.

The report shows labels ("peak memory") and values in units people read ("341.2 MiB"),
never raw keys: the key stays in a tooltip. A key this table does not know (the bench
and training code grow new ones) still gets a readable label from its name and a unit
guessed from its suffix (``_s``, ``_ms``, ``_bytes``, ``_per_second``, ``_p10``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from dlscale.units import format_bytes, si

# the order of a run's grouped tables; "other" holds keys this table does not know
GROUPS = ("speed", "results", "compute", "memory", "reliability", "settings", "provenance", "other")
GROUP_TITLES = {
    "speed": "speed", "results": "accuracy and loss", "compute": "compute", "memory": "memory",
    "reliability": "how far to trust the figures", "settings": "settings", "provenance": "provenance",
    "other": "other figures",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def plain(value: float) -> str:
    """3 significant digits, thousands grouped: 1409.2 -> '1,409', 0.01234 -> '0.0123'."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}"


def show_text(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return plain(value) if math.isfinite(value) else "-"
    if isinstance(value, list):
        return ", ".join(show_text(v) for v in value) if len(value) <= 8 else f"{len(value)} values"
    if isinstance(value, dict):
        return "; ".join(f"{humanise(str(k))} {show_text(v)}" for k, v in value.items())
    return f"{value} {unit}".strip()


def show_count(value: Any, unit: str = "") -> str:
    number = _number(value)
    if number is None:
        return show_text(value)
    text = f"{number:,.0f}" if number.is_integer() else plain(number)
    return f"{text} {unit}".strip()


def show_decimal(value: Any, unit: str = "") -> str:
    """Losses and other figures read to 4 significant digits."""
    number = _number(value)
    return show_text(value) if number is None else f"{number:.4g} {unit}".strip()


def show_rate(value: Any, unit: str) -> str:
    number = _number(value)
    return show_text(value) if number is None else f"{plain(number)} {unit}"


def show_si(value: Any, unit: str) -> str:
    number = _number(value)
    return show_text(value) if number is None else si(number, unit)


def show_bytes(value: Any, unit: str = "") -> str:
    number = _number(value)
    return show_text(value) if number is None or number < 0 else format_bytes(number)


def show_percent(value: Any, unit: str = "") -> str:
    """A fraction as a percentage: 0.0935 -> '9.35%'."""
    number = _number(value)
    if number is None:
        return show_text(value)
    return "0%" if number == 0 else f"{100 * number:.3g}%"


def show_seconds(value: Any, unit: str = "") -> str:
    """Seconds in the unit that keeps 3 digits: 0.0123 -> '12.3 ms', 200 -> '3 min 20 s'."""
    number = _number(value)
    if number is None:
        return show_text(value)
    size = abs(number)
    if size == 0:
        return "0 s"
    if size < 1e-3:
        return f"{number * 1e6:.3g} µs"
    if size < 1:
        return f"{number * 1e3:.3g} ms"
    if size < 120:
        return f"{number:.3g} s"
    if size < 7200:
        return f"{int(number // 60)} min {number % 60:.0f} s"
    return f"{number / 3600:.3g} h"


def show_milliseconds(value: Any, unit: str = "") -> str:
    number = _number(value)
    return show_text(value) if number is None else show_seconds(number / 1e3)


def show_times(value: Any, unit: str = "") -> str:
    number = _number(value)
    return show_text(value) if number is None else f"{number:.3g}×"


def show_pfs_days(value: Any, unit: str = "") -> str:
    number = _number(value)
    return show_text(value) if number is None else f"{number:.3g} PF/s-days"


def show_gbps(value: Any, unit: str = "") -> str:
    number = _number(value)
    return show_text(value) if number is None else f"{plain(number)} GB/s"


@dataclass(frozen=True)
class Key:
    """How one result key is shown: ``show(value, unit)`` makes the text of a cell."""

    label: str
    group: str
    show: Callable[[Any, str], str] = show_text
    unit: str = ""

    def format(self, value: Any) -> str:
        return self.show(value, self.unit)


K = Key
KEYS: dict[str, Key] = {
    # speed
    "samples_per_second": K("throughput", "speed", show_rate, "samples/s"),
    "tokens_per_second": K("token throughput", "speed", show_rate, "tokens/s"),
    "predictions_per_second": K("predictions/s", "speed", show_rate, "predictions/s"),
    "train_samples_per_second": K("training consumes", "speed", show_rate, "samples/s"),
    "wall_seconds": K("wall time", "speed", show_seconds),
    "train_seconds": K("training time", "speed", show_seconds),
    "warmup_seconds": K("warm-up time", "speed", show_seconds),
    "warmup_s": K("warm-up time", "speed", show_seconds),
    "step_time_median_s": K("step time (median)", "speed", show_seconds),
    "step_time_spread_s": K("step time spread (max - min)", "speed", show_seconds),
    "step_time_s": K("step time", "speed", show_seconds),
    "step_times_s": K("step time per repeat", "speed", show_text),
    "time_s": K("time", "speed", show_seconds),
    "time_spread_s": K("time spread", "speed", show_seconds),
    "startup_s": K("start-up time", "speed", show_seconds),
    "compute_s": K("compute per step", "speed", show_seconds),
    "comm_s": K("communication per step", "speed", show_seconds),
    "comm_exposed_s": K("exposed communication per step", "speed", show_seconds),
    "data_wait_s": K("data wait per step", "speed", show_seconds),
    "straggler_s": K("straggler delay per step", "speed", show_seconds),
    "overhead_s": K("overhead per step", "speed", show_seconds),
    "data_wait_fraction": K("time waiting for data", "speed", show_percent),
    "latency_p50_ms": K("latency p50", "speed", show_milliseconds),
    "latency_p90_ms": K("latency p90", "speed", show_milliseconds),
    "latency_p99_ms": K("latency p99", "speed", show_milliseconds),
    "p99_bound_ms": K("p99 latency bound", "speed", show_milliseconds),
    "max_rate_under_p99": K("highest load within the p99 bound", "speed", show_rate, "requests/s"),
    "speedup": K("speedup", "speed", show_times),
    "efficiency": K("parallel efficiency", "speed", show_percent),
    "algbw_gbps": K("algorithm bandwidth", "speed", show_gbps),
    "busbw_gbps": K("bus bandwidth (busbw)", "speed", show_gbps),
    "time_to_target_seconds": K("time to target accuracy", "speed", show_seconds),
    "time_to_target_step": K("step reaching the target", "speed", show_count),
    "spread": K("spread (max - min)", "speed", show_rate, "samples/s"),
    "input_bound": K("limited by the input pipeline", "speed", show_text),
    "model_busy": K("model busy", "speed", show_percent),
    "within_p99_bound": K("within the p99 bound", "speed", show_text),
    "errors": K("errors", "speed", show_count),
    "mean_batch_size": K("mean batch formed", "speed", show_decimal, "samples"),
    # accuracy and loss
    "final_loss": K("final training loss", "results", show_decimal),
    "test_loss": K("test loss", "results", show_decimal),
    "test_accuracy": K("test accuracy", "results", show_percent),
    "val_loss": K("validation loss", "results", show_decimal),
    "val_accuracy": K("validation accuracy", "results", show_percent),
    "test_mae": K("test mean absolute error", "results", show_decimal),
    "test_r2": K("test R²", "results", show_decimal),
    "target_accuracy": K("target accuracy", "results", show_percent),
    "best_step": K("best step", "results", show_count),
    "best_value": K("best monitored value", "results", show_decimal),
    "stopped_early": K("stopped early", "results", show_text),
    "loss_finite": K("loss stayed finite", "results", show_text),
    # compute
    "flops_per_sample": K("compute per sample", "compute", show_si, "FLOP"),
    "forward_flops_per_sample": K("forward pass per sample", "compute", show_si, "FLOP"),
    "flops_per_token": K("compute per token", "compute", show_si, "FLOP"),
    "total_flops": K("total compute", "compute", show_si, "FLOP"),
    "achieved_flops_per_second": K("achieved FLOP/s", "compute", show_si, "FLOP/s"),
    "peak_flops_per_second": K("peak FLOP/s", "compute", show_si, "FLOP/s"),
    "measured_peak_flops_per_second": K("measured peak FLOP/s", "compute", show_si, "FLOP/s"),
    "datasheet_peak_flops_per_second": K("datasheet peak FLOP/s", "compute", show_si, "FLOP/s"),
    "peak_source": K("peak FLOP/s from", "compute", show_text),
    "mfu": K("MFU", "compute", show_percent),
    "mfu_datasheet": K("MFU (datasheet peak)", "compute", show_percent),
    "mfu_measured_peak": K("MFU (measured peak)", "compute", show_percent),
    "pfs_days": K("compute in petaflop/s-days", "compute", show_pfs_days),
    "parameters": K("parameters", "compute", show_count),
    "energy_kwh": K("energy", "compute", show_decimal, "kWh"),
    "device_hours": K("device-hours", "compute", show_decimal, "h"),
    "device_hours_basis": K("device-hours counted as", "compute", show_text),
    "rank_among_landmarks": K("landmarks that used less compute", "compute", show_count),
    "rank_among_landmarks_basis": K("rank counted as", "compute", show_text),
    "fraction_of_alexnet": K("share of AlexNet's compute", "compute", show_decimal),
    "fraction_of_gpt3": K("share of GPT-3's compute", "compute", show_decimal),
    "year": K("year", "provenance", show_text),
    # memory
    "peak_memory_bytes": K("peak memory", "memory", show_bytes),
    "bytes": K("message size", "settings", show_bytes),
    # how far to trust the figures (written by bench and training code)
    "reliable": K("reliable", "reliability", show_text),
    "unreliable_reason": K("why not reliable", "reliability", show_text),
    "load_average_before": K("load average before", "reliability", show_decimal),
    "load_average_after": K("load average after", "reliability", show_decimal),
    "cv": K("variation between repeats (CV)", "reliability", show_percent),
    "superlinear": K("faster than linear", "reliability", show_text),
    "repeats": K("repeats", "reliability", show_text),
    "steal_fraction": K("CPU time taken by other machines (steal)", "reliability", show_percent),
    # settings
    "model": K("model", "settings"),
    "data": K("data set", "settings"),
    "device": K("device", "settings"),
    "precision": K("precision", "settings"),
    "compiled": K("compiled (torch.compile)", "settings"),
    "compile": K("compiled (torch.compile)", "settings"),
    "channels_last": K("channels-last layout", "settings"),
    "mode": K("mode", "settings"),
    "world_size": K("workers", "settings", show_count),
    "workers": K("workers", "settings", show_count),
    "gpus": K("GPUs", "settings", show_count),
    "nodes": K("nodes", "settings", show_count),
    "global_batch_size": K("global batch", "settings", show_count, "samples"),
    "global_batch": K("global batch", "settings", show_count, "samples"),
    "per_worker_batch": K("batch per worker", "settings", show_count, "samples"),
    "batch_size": K("batch size", "settings", show_count),
    "seq_len": K("sequence length", "settings", show_count, "tokens"),
    "steps": K("steps", "settings", show_count),
    "epochs": K("epochs", "settings", show_count),
    "lr": K("learning rate", "settings", show_decimal),
    "scale_lr": K("learning rate scaled with workers", "settings"),
    "monitor": K("monitored metric", "settings"),
    "loader_workers": K("data loader processes", "settings", show_count),
    "skipped_files": K("skipped files", "settings", show_count),
    "slurm_restart_count": K("SLURM restarts", "settings", show_count),
    "auto_settings": K("automatic choices", "settings"),
    "auto_batch": K("batch size found automatically", "settings"),
    "tuned": K("settings tuned", "settings"),
    "op": K("operation", "settings"),
    "decoder": K("decoder", "settings"),
    "concurrency": K("concurrent clients", "settings", show_count),
    "rate": K("offered load", "settings", show_rate, "requests/s"),
    "note": K("note", "settings"),
    "error": K("error", "settings"),
    "skipped": K("skipped", "settings"),
    "predicted": K("predicted", "settings"),
    # provenance
    "run_dir": K("run directory", "provenance"),
    "hostname": K("host", "provenance"),
    "platform": K("platform", "provenance"),
    "python": K("Python", "provenance"),
    "dlscale": K("dlscale", "provenance"),
    "torch": K("PyTorch", "provenance"),
    "cuda": K("CUDA", "provenance"),
    "hip": K("ROCm (HIP)", "provenance"),
    "driver": K("driver", "provenance"),
    "gpu_count": K("GPU count", "provenance", show_count),
    "cpu": K("CPU", "provenance"),
    "command": K("command", "provenance"),
    "date": K("date", "provenance"),
    "git": K("git commit", "provenance"),
    "url": K("server", "provenance"),
}

# suffix -> (words, formatter, unit) for keys the table does not know; longest first
SUFFIXES: tuple[tuple[str, str, Callable[[Any, str], str], str], ...] = (
    ("_per_second", "per second", show_rate, "/s"),
    ("_fraction", "", show_percent, ""),
    ("_seconds", "", show_seconds, ""),
    ("_bytes", "", show_bytes, ""),
    ("_flops", "", show_si, "FLOP"),
    ("_gbps", "", show_gbps, ""),
    ("_kwh", "", show_decimal, "kWh"),
    ("_ms", "", show_milliseconds, ""),
    ("_s", "", show_seconds, ""),
)
PERCENTILE_SUFFIXES = ("_p10", "_p25", "_p50", "_p75", "_p90", "_p95", "_p99")


def humanise(key: str) -> str:
    """A key nobody described, as words: 'load_average_before' -> 'load average before'."""
    return key.replace("_", " ").strip() or key


def describe(key: str) -> Key:
    """How to show ``key``: from the table, else from a percentile or unit suffix, else as words."""
    if key in KEYS:
        return KEYS[key]
    if key.endswith("_cv") and len(key) > 3:  # 'samples_per_second_cv': how far its repeats varied
        return Key(f"{describe(key[:-3]).label}: variation between repeats (CV)", "reliability", show_percent)
    for suffix in PERCENTILE_SUFFIXES:  # 'samples_per_second_p10' -> 'throughput p10', samples/s
        if key.endswith(suffix) and len(key) > len(suffix):
            base = describe(key[: -len(suffix)])
            return Key(f"{base.label} {suffix[1:]}", base.group, base.show, base.unit)
    for suffix, words, show, unit in SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            stem = humanise(key[: -len(suffix)])
            if suffix == "_per_second":
                return Key(f"{stem} per second", "speed", show, f"{stem.split()[-1]}/s")
            group = "memory" if suffix == "_bytes" else "compute" if suffix in ("_flops", "_kwh") else "speed"
            return Key(f"{stem} {words}".strip(), group, show, unit)
    return Key(humanise(key), "other")


def label(key: str) -> str:
    return describe(key).label


def format_value(key: str, value: Any) -> str:
    return describe(key).format(value)


# One sentence per term a reader may not know, shown once near its first appearance.
EXPLANATIONS: tuple[tuple[str, Callable[[str], bool], str], ...] = (
    ("mfu", lambda key: key.startswith("mfu"),
     "MFU (model FLOPs utilisation) is the achieved FLOP/s divided by the peak FLOP/s of the devices used "
     "at this precision: the share of the hardware's arithmetic the model kept busy."),
    ("percentiles", lambda key: any(key.endswith(s) or f"{s}_" in key for s in PERCENTILE_SUFFIXES),
     "p50, p90 and p99 are percentiles: half of the measurements were faster than p50, "
     "99 in 100 faster than p99 (the tail a user waits for)."),
    ("busbw", lambda key: key == "busbw_gbps",
     "Bus bandwidth (busbw) is the algorithm bandwidth (bytes / time) times 2(N-1)/N for N workers, as "
     "nccl-tests reports it, so it compares directly with the link's speed whatever N is."),
    ("pfs_days", lambda key: key == "pfs_days",
     "A petaflop/s-day is 10^15 FLOP/s for a day: 8.64e19 floating-point operations."),
)


class Explainer:
    """Hands out each explanation once per report, for the first table that shows its term."""

    def __init__(self) -> None:
        self.given: set[str] = set()

    def __call__(self, keys: list[str]) -> list[str]:
        out = []
        for name, applies, sentence in EXPLANATIONS:
            if name not in self.given and any(applies(k) for k in keys):
                self.given.add(name)
                out.append(sentence)
        return out
