"""From timed counts to the figures every run reports: global throughput, achieved
FLOP/s and model-FLOPs utilisation (MFU).

Global figures across ranks come from an all-reduce: the sum of samples every rank
processed over the time of the slowest rank. Rank 0's rate times the world size
would hide stragglers. With one process the all-reduce is skipped.

MFU = achieved FLOP/s / peak FLOP/s of the devices used, at the precision used. The
peak is the dense datasheet figure for known GPUs and the measured large-GEMM rate
for CPUs; both MFUs are reported where both peaks are known. An unknown chip gets no
datasheet MFU, never a guessed one. The peak is looked up (maybe measured) before
timing, by ``peaks.peak_for``, and passed in: nothing here measures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # only the type: this module never looks a peak up
    from dlscale.hardware.peaks import PeakFlops


def global_counts(samples: int, seconds: float, device: torch.device) -> tuple[int, float]:
    """(samples summed over ranks, seconds of the slowest rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return samples, seconds
    count = torch.tensor([float(samples)], dtype=torch.float64, device=device)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return int(count.item()), float(slowest.item())


def utilisation(
    flops_per_sample: float | None,
    samples_per_second: float | None,
    device: torch.device,
    precision: str,
    world_size: int = 1,
    *,
    peak: PeakFlops,
) -> dict[str, Any]:
    """Achieved FLOP/s, the peaks of all devices used, and MFU against each; ``peak`` is
    one device's (``peaks.peak_for(device, precision)``)."""
    achieved = flops_per_sample * samples_per_second if flops_per_sample and samples_per_second else None
    datasheet = peak.datasheet * world_size if peak.datasheet else None
    measured = peak.measured * world_size if peak.measured else None
    if device.type == "cuda":  # the headline peak: datasheet for known GPUs, nothing for unknown ones
        headline, source = datasheet, peak.datasheet_source
    else:
        headline, source = measured, f"measured large-GEMM rate ({precision}) of this {device.type}" if measured else None
    return {
        "achieved_flops_per_second": achieved,
        "peak_flops_per_second": headline,
        "peak_source": source,
        "mfu": achieved / headline if achieved and headline else None,
        "datasheet_peak_flops_per_second": datasheet,
        "measured_peak_flops_per_second": measured,
        "mfu_datasheet": achieved / datasheet if achieved and datasheet else None,
        "mfu_measured_peak": achieved / measured if achieved and measured else None,
    }
