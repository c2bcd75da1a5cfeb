"""Where a forecast's single-GPU speed comes from when the user gives none: measured now on
this machine, or a datasheet peak times an assumed MFU. (The model's size comes from
``dlscale.models.size``; a `bench scaling` result's speed from ``dlscale.forecast.calibrate``.)
"""

from __future__ import annotations

from typing import Callable

from dlscale.errors import UserError


def gpu_counts(text: str) -> list[int]:
    """The GPU counts of ``--gpus``, "1,8,64"; UserError for anything else."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus takes comma-separated whole numbers like 1,8,64; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--gpus takes GPU counts of at least 1, like 1,8,64; got {text!r}")
    return counts


def measure_here(name: str, batch_size: int, say: Callable[[str], None]) -> tuple[float, str]:
    """(samples/s, where it comes from): one training step rate of zoo model ``name`` on this
    machine's best device (the trainer's own step, synthetic batch, a short `bench train`)."""
    from dlscale.bench.train import Setting, Workload, measure, resolve_settings
    from dlscale.hardware.device import resolve_device
    from dlscale.models import model_info

    info = model_info(name)
    device = resolve_device("auto")
    workload = Workload(info, info.default_input_shape, info.default_num_classes)
    # the precision and memory format `dlscale train` would use here; eager: 3 steps cannot pay for a compile
    chosen = resolve_settings(workload, device, batch_size, compile=False)
    say(f"no --single-throughput given: measuring {name} at batch {batch_size} on {device} ({chosen.precision}) ...")
    row = measure(workload, Setting(batch_size, chosen.precision, False, chosen.channels_last), device,
                  steps=3, warmup=1, repeats=1)
    speed = row["samples_per_second"]
    return speed, f"measured now on {device} ({chosen.precision}, eager, 3 steps): {speed:,.1f} samples/s"


def datasheet_speed(device: str, precision: str, mfu: float, train_flops: float | None) -> tuple[float, str]:
    """(samples/s, where it comes from): the datasheet peak of GPU ``device`` at ``precision``
    times ``mfu``, over the training FLOPs of one sample."""
    from dlscale.hardware.datasheet import datasheet_peak

    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must lie in (0, 1]; got {mfu}")
    if not train_flops:
        raise UserError("--device needs the training FLOPs per sample: give --model (a zoo model) or --flops-per-sample")
    peak = datasheet_peak(device, precision)
    if peak is None:
        raise UserError(f"no {precision} datasheet peak for device {device!r}; give the name as torch "
                        "prints it (see 'dlscale hw'), or a measured --single-throughput")
    flops_per_second, source = peak
    single = flops_per_second * mfu / train_flops
    return single, f"datasheet {flops_per_second / 1e12:.1f} TFLOP/s x MFU {mfu:g} / {train_flops:.3g} FLOPs per sample ({source})"
