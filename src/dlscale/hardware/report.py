"""hardware.json and ``dlscale hw --json``: the machine, its datasheet peaks and, when
asked, its measured peaks, in one object, so a figure can always be traced to the
hardware that produced it."""

from __future__ import annotations

from typing import Any

from dlscale.hardware import peaks
from dlscale.hardware.datasheet import datasheet_peaks
from dlscale.hardware.inventory import driver_version, inventory

# hardware.json's one-value keys that say which machine and software, in the order a reader
# shows them (report/html's provenance table); the cpu and gpus entries are nested
MACHINE_KEYS = ("hostname", "platform", "python", "dlscale", "torch", "cuda", "hip", "driver", "gpu_count")


def hw_report(measure: bool = True, remeasure: bool = False, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``dlscale hw --json`` prints and each run keeps as hardware.json: the inventory,
    the driver, every GPU's dense datasheet peaks (all precisions, with sources) and, when
    ``measure``, the measured peaks of every device with their provenance: ``measured``
    when given (a run passes the figures its MFU used), else cached or measured now."""
    report = inventory()
    report["driver"] = driver_version()  # NVIDIA driver through nvidia-ml-py, when installed
    report["gpu_count"] = len(report["gpus"])
    report["datasheet_peaks"] = {f"cuda:{g['index']}": datasheet_peaks(g["index"]) for g in report["gpus"]}
    report["cpu_peak_note"] = "CPUs have no datasheet entry: MFU on a CPU uses the measured large-GEMM rate"
    if measure and measured is None:
        measured = peaks.measured_peaks(remeasure=remeasure)
    report["measured_peaks"] = measured if measure else None
    return report
