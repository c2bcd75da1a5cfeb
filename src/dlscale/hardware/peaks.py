"""How fast a device can go: its measured peaks (cached per machine) and, with the
datasheet, the ``PeakFlops`` that MFU is computed against.

Looking a peak up may measure for seconds, so it is a setup step: ``peak_for`` is called
once before the timed work, and its answer is passed to ``mfu.utilisation``, which is
arithmetic only.

The measurement (``microbench``) is cached per machine as JSON in the user cache folder
($DLSCALE_CACHE_DIR, else $XDG_CACHE_HOME/dlscale, else ~/.cache/dlscale), one file per
fingerprint (hostname, CPU model, threads, GPU names, torch version), with its
provenance. ``measured_peaks(remeasure=True)`` (``dlscale hw --remeasure``) refreshes
it; a corrupt or foreign file is measured again, never a crash. Processes of one machine
take turns through ``contention.machine_lock``; figures taken on a busy machine are
replaced by the next call on a quiet one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.hardware import contention, datasheet
from dlscale.hardware.microbench import measure_cpu, measure_cuda, tf32_matmul_enabled
from dlscale.hardware.provenance import measured_on, now

MEASUREMENT_METHOD = 1  # bump when the way peaks are measured changes: old caches are then ignored


# --------------------------------------------------------------------------- measuring


def measure_peaks() -> dict[str, Any]:
    """Measure every device now (a few seconds): ``{"devices": {...}, "provenance": {...}}``."""
    begin = time.perf_counter()
    load_before = contention.load_average()
    devices: dict[str, Any] = {"cpu": measure_cpu()}
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        try:
            devices[f"cuda:{index}"] = measure_cuda(index)
        except RuntimeError as exc:  # out of memory, a busy or broken GPU: say so, keep the rest
            devices[f"cuda:{index}"] = {"name": torch.cuda.get_device_name(index), "error": str(exc).splitlines()[0]}
            torch.cuda.empty_cache()
    provenance = {
        "date": now(),
        **measured_on(),
        "sizes": {d: e.get("gemm_sizes") for d, e in devices.items()},
        "repeats": {d: e.get("gemm_repeats") for d, e in devices.items()},
        "copy_buffer_bytes": {d: e.get("copy_buffer_bytes") for d, e in devices.items()},
        "gemm": "C = A @ B, n x n random matrices, 2 n^3 FLOPs a call; timed after warm-up, device synchronised",
        "copy": "dst.copy_(src) of one buffer; bandwidth = 2 x bytes / time (read + write, as STREAM copy)",
        "statistic": "best of the timed repeats (highest rate): interference only slows a repeat; median kept beside it",
        "timer": "time.perf_counter on CPU; CUDA events on GPUs",
        "method": MEASUREMENT_METHOD,
        "seconds": time.perf_counter() - begin,
        # other work on the machine while measuring makes the figures low: keep the evidence
        "load_average_before": load_before,
        "busy": contention.is_busy(load_before),
        "busy_means": "measured while other work ran: replaced by the next measurement on a quiet machine",
    }
    return {"devices": devices, "provenance": provenance}


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """$DLSCALE_CACHE_DIR, else $XDG_CACHE_HOME/dlscale, else ~/.cache/dlscale."""
    if os.environ.get("DLSCALE_CACHE_DIR"):
        return Path(os.environ["DLSCALE_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dlscale"
    return Path.home() / ".cache" / "dlscale"


def fingerprint() -> dict[str, Any]:
    """What makes a measurement belong to this machine: change any of it and peaks are measured again."""
    machine = measured_on()
    return {**{key: machine[key] for key in ("hostname", "cpu", "threads", "gpus", "torch")}, "method": MEASUREMENT_METHOD}


def cache_path(print_: dict[str, Any] | None = None) -> Path:
    print_ = print_ or fingerprint()
    digest = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(print_["hostname"])).strip("-.")[:40] or "host"
    return cache_dir() / f"peaks-{host}-{digest}.json"


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _valid(data: Any, print_: dict[str, Any]) -> bool:
    """A cache file is used only when it is whole, for this machine, and its CPU figures are rates."""
    if not isinstance(data, dict) or data.get("fingerprint") != print_:
        return False
    devices = data.get("devices")
    if not isinstance(devices, dict) or not isinstance(data.get("provenance"), dict):
        return False
    cpu = devices.get("cpu")
    if not isinstance(cpu, dict) or not isinstance(cpu.get("gemm_flops_per_second"), dict):
        return False
    return all(_is_rate(v) for v in cpu["gemm_flops_per_second"].values()) and bool(cpu["gemm_flops_per_second"])


def cached_peaks() -> dict[str, Any] | None:
    """This machine's cached measurement, or None when there is none (or it is unreadable)."""
    print_ = fingerprint()
    path = cache_path(print_)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not _valid(data, print_):
        return None
    return {"devices": data["devices"], "provenance": data["provenance"], "cache": {"path": str(path), "hit": True}}


def _worth_remeasuring(cached: dict[str, Any]) -> bool:
    """Figures taken on a busy machine are low (MFU above 100% follows): replace them as soon
    as the machine is quiet, instead of keeping them until someone asks for --remeasure."""
    return bool(cached.get("provenance", {}).get("busy")) and not contention.machine_busy()


def measured_peaks(remeasure: bool = False) -> dict[str, Any]:
    """Measured GEMM FLOP/s per precision and copy bandwidth of every device of this machine,
    from the cache when it holds this machine's figures, else measured now (and cached).

    ``{"devices": {"cpu": {...}, "cuda:0": {...}}, "provenance": {...}, "cache": {"path", "hit"}}``
    """
    from dlscale.runs.files import write_json

    if not remeasure:
        cached = cached_peaks()
        if cached is not None and not _worth_remeasuring(cached):
            return cached
        remeasure = cached is not None  # a busy-machine figure, and the machine is quiet now
    print_ = fingerprint()
    path = cache_path(print_)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = True
    except OSError:
        writable = False
    with contention.machine_lock(path) if writable else contextlib.nullcontext(False) as locked:
        if not remeasure:  # another process may have measured while this one waited
            cached = cached_peaks()
            if cached is not None:
                return cached
        result = measure_peaks()
        saved = False
        if locked:  # never write beside a holder that may still write (it was only stopped)
            try:
                write_json(path, {"fingerprint": print_, **result})
                saved = True
            except OSError:
                pass  # a read-only cache folder: the figures are still good, only not kept
    return {**result, "cache": {"path": str(path) if saved else None, "hit": False}}


# --------------------------------------------------------------------------- peaks for MFU


@dataclass(frozen=True)
class PeakFlops:
    datasheet: float | None  # dense datasheet FLOP/s of ONE device at this precision, None when unknown
    datasheet_source: str | None
    measured: float | None  # measured large-GEMM FLOP/s of ONE device at this precision, None if not measured


def peak_for(device: torch.device, precision: str, measured: dict[str, Any] | None = None) -> PeakFlops:
    """The peaks MFU is computed against, for one device at ``precision`` (fp32, bf16, fp16).
    A setup step: the measured figure comes from ``measured`` (what ``measured_peaks()``
    returned, so that a run reports the figures its MFU used), else from the cache,
    measuring (seconds) when this machine has none.

    On CUDA, fp32 means TF32 when this process lets fp32 matmuls run as TF32 (and the chip
    has TF32), plain fp32 otherwise.
    """
    datasheet.check_precision(precision)
    device = torch.device(device)
    if device.type == "cpu":
        rates = (measured or measured_peaks())["devices"]["cpu"].get("gemm_flops_per_second", {})
        return PeakFlops(datasheet=None, datasheet_source=None, measured=rates.get(precision))
    if device.type != "cuda":
        return PeakFlops(datasheet=None, datasheet_source=None, measured=None)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    tf32 = precision == "fp32" and tf32_matmul_enabled()
    key = "tf32" if tf32 and datasheet.datasheet_peak(props.name, "tf32") is not None else precision
    found = datasheet.visible_datasheet_peak(props.name, key, props.multi_processor_count)
    source = None
    if found is not None:
        source = found[1]
        if key == "tf32":
            source = f"fp32 matmuls run as TF32 in this process: {source}"
    entry = (measured or measured_peaks())["devices"].get(f"cuda:{index}", {})
    rates = entry.get("gemm_flops_per_second") or {}
    measured = rates.get("tf32") if tf32 and "tf32" in rates else rates.get(precision)
    return PeakFlops(datasheet=found[0] if found else None, datasheet_source=source, measured=measured)
