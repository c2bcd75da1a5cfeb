"""``dlscale lab``: the classic figures of "why supercomputing matters to deep learning",
measured on this machine and written as one report.

(a) the same training on the CPU and, when there is one, on the GPU, with the speedup;
(b) speedup vs number of workers: measured for the workers this machine has, predicted
    beyond it by the communication model (marked as predicted);
(c) predictions/s per device and precision;
(d) the compute chart: the lab's own runs among the landmark models.

Every step is the library call behind an ordinary dlscale command (``dlscale.fit``,
``bench train``, ``bench scaling``, ``forecast``, ``bench infer``, ``compute``), run in this
process and writing its usual run directory or result under the lab folder; the report is
built from those files only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.runs import results


@dataclass(frozen=True)
class LabPlan:
    """How big each experiment is: --quick fits 2 minutes on 2 CPU cores."""

    train_epochs: int  # the accuracy run, a cnn on digits (loss curves, compute chart)
    bench_model: str  # the CPU-vs-GPU training benchmark
    bench_data: str
    bench_batch: int
    bench_steps: int
    scaling_model: str
    scaling_data: str
    scaling_batch: int
    scaling_repeats: int  # launches per worker count, interleaved (each starts its workers anew)
    infer_model: str
    infer_shape: tuple[int, ...] | None  # None: the model's own input shape
    infer_batches: tuple[int, ...]  # on GPUs; CPUs stop at 64 (a 256-image batch of resnet18 takes seconds there)
    forecast_model: str  # `dlscale forecast`'s model beyond the measured worker counts
    forecast_batch: int


QUICK = LabPlan(
    train_epochs=5,
    bench_model="cnn", bench_data="synthetic", bench_batch=64, bench_steps=10,
    scaling_model="cnn", scaling_data="synthetic", scaling_batch=32, scaling_repeats=1,
    infer_model="cnn", infer_shape=None, infer_batches=(1, 64),
    forecast_model="cnn", forecast_batch=32,
)
FULL = LabPlan(
    train_epochs=10,
    bench_model="resnet18", bench_data="synthetic:3x32x32", bench_batch=128, bench_steps=10,
    scaling_model="resnet18", scaling_data="synthetic:3x32x32", scaling_batch=64, scaling_repeats=3,
    infer_model="resnet18", infer_shape=(3, 32, 32), infer_batches=(1, 32, 256),
    forecast_model="resnet18", forecast_batch=64,
)


def run_lab(out: Path, quick: bool, say: Callable[[str], None], detail: Callable[[str], None] | None = None) -> Path:
    """Run the lab into the folder ``out`` (made by the caller) and return its report.html.
    ``say`` announces each experiment; ``detail`` (default ``say``) hears the steps inside."""
    from dlscale.api import fit
    from dlscale.bench.run_scaling import ScalingBenchRequest, run_bench_scaling
    from dlscale.bench.run_train import TrainBenchRequest, run_bench_train
    from dlscale.report.compute import compute_report

    detail = detail or say
    plan = QUICK if quick else FULL
    gpu = torch.cuda.is_available()
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    start = time.perf_counter()
    inputs: list[Path] = []
    notes: list[str] = []

    say("lab (a): training on " + " and ".join(devices))
    train_dir = out / "train"
    fit("cnn", "digits", epochs=plan.train_epochs, device=devices[-1], run_dir=str(train_dir))
    inputs.append(train_dir)
    trained = _resolved_settings(train_dir)
    speeds: dict[str, float] = {}
    for device in devices:
        bench_dir = out / f"bench-train-{device}"
        # the device the lab trained on is timed with that run's resolved settings; another
        # device gets what `dlscale train` would resolve there
        same = trained if device == devices[-1] else {}
        request = TrainBenchRequest(
            model=plan.bench_model, data=plan.bench_data, batch_size=plan.bench_batch, device=device,
            precision=same.get("precision", "auto"), compile=same.get("compile"),
            channels_last=same.get("channels_last"), steps=plan.bench_steps, repeats=3, run_dir=str(bench_dir),
        )
        result, path = run_bench_train(request, detail)
        detail(f"result written to {path}")
        speeds[device] = result["results"][0]["samples_per_second"]
        inputs.append(bench_dir)
    if gpu:
        notes.append(f"GPU vs CPU training speedup: {speeds['cuda'] / speeds['cpu']:.1f}x "
                     f"({speeds['cuda']:,.0f} vs {speeds['cpu']:,.0f} samples/s)")
    else:
        notes.append(f"No GPU was found: the CPU row stands alone ({speeds['cpu']:,.0f} samples/s). "
                     "Run the lab on a machine with a GPU to see the speedup.")

    workers = _worker_counts(gpu)
    say(f"lab (b): speedup with {', '.join(map(str, workers))} workers, predicted beyond")
    scaling_dir = out / "bench-scaling"
    request = ScalingBenchRequest(
        nproc=tuple(workers), model=plan.scaling_model, data=plan.scaling_data, batch_size=plan.scaling_batch,
        device=devices[-1], steps=5, repeats=plan.scaling_repeats, run_dir=str(scaling_dir),
    )
    result, path = run_bench_scaling(request, detail)
    detail(f"result written to {path}")
    inputs.append(scaling_dir)
    inputs.append(_forecast_beyond(out, plan, result["results"], gpu))
    notes.append(
        "Predicted points (hollow, dashed) come from dlscale's communication model with this machine's "
        "measured one-worker speed, " + ("8 GPUs per node on NVLink 4 and InfiniBand NDR between nodes."
                                         if gpu else "one worker per node on 25 Gb/s Ethernet.")
    )

    say("lab (c): predictions/s per device and precision")
    for device in devices:
        inputs.append(_bench_infer(out / f"bench-infer-{device}", plan, device, detail))

    say("lab (d): the compute chart")
    compute = compute_report(train_dir)
    notes.append(f"The lab's training run used {compute['pfs_days']:.3g} petaflop/s-days "
                 f"({compute['fraction_of_alexnet']:.2g} of AlexNet's compute).")
    notes.append(f"The lab took {time.perf_counter() - start:.0f} s.")

    from html import escape

    from dlscale.report.html import build_report

    section = "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
    report = build_report(inputs, out / "report.html", title="dlscale lab: what the hardware buys",
                          extra_sections=[("The lab in a few lines", section)], plots_dir=out / "figures")
    results.write_result(out / "lab.json", "lab", {"notes": notes, "inputs": [str(p) for p in inputs], "quick": quick})
    return report


def _resolved_settings(run_dir: Path) -> dict[str, Any]:
    """precision, compile and channels_last as the run resolved them (its config.toml), so the
    benchmark row of that device times the settings the training run used."""
    import tomllib

    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    settings: dict[str, Any] = {}
    if isinstance(config.get("precision"), str) and config["precision"] != "auto":
        settings["precision"] = config["precision"]
    for key in ("compile", "channels_last"):
        if isinstance(config.get(key), bool):
            settings[key] = config[key]
    return settings


def _bench_infer(run_dir: Path, plan: LabPlan, device_name: str, detail: Callable[[str], None]) -> Path:
    """Predictions/s of the plan's model on one device: fp32/bf16/int8 on a CPU, fp32/bf16/fp16 on a GPU."""
    from dlscale.bench import infer, targets
    from dlscale.bench.common import bench_run_dir
    from dlscale.bench.run_infer import run_bench_infer
    from dlscale.hardware.device import resolve_device

    device = resolve_device(device_name)
    cuda = device_name == "cuda"
    settings = infer.InferSettings(
        batch_sizes=plan.infer_batches if cuda else tuple(b for b in plan.infer_batches if b <= 64),
        precisions=("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16", "int8"),
    )
    target = targets.zoo_target(plan.infer_model, plan.infer_shape)
    _, path = run_bench_infer(target, settings, device, bench_run_dir("infer", target.name, str(run_dir)),
                              note=lambda text: detail(f"note: {text}"))
    detail(f"result: {path}")
    return run_dir


def _worker_counts(gpu: bool) -> list[int]:
    have = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    counts = [1]
    while counts[-1] * 2 <= have:
        counts.append(counts[-1] * 2)
    return counts if len(counts) > 1 else [1, 2]


def _forecast_beyond(out: Path, plan: LabPlan, measured: list[dict[str, Any]], gpu: bool) -> Path:
    """Predicted speedup for worker counts this machine does not have (the model of `dlscale forecast`)."""
    from dlscale.bench.common import result_object
    from dlscale.forecast.model import predict
    from dlscale.forecast.networks import network
    from dlscale.models.size import parameter_count

    params = parameter_count(plan.forecast_model)
    one = min(measured, key=lambda r: r["workers"])
    largest = max(r["workers"] for r in measured)
    counts = [largest * 2 ** k for k in range(1, 6)]
    per_node = 8 if gpu else 1
    rows = predict(
        params=params, flops_per_sample=None, per_gpu_batch=plan.forecast_batch,
        single_throughput=one["samples_per_second"], gpus_list=[1, *counts], gpus_per_node=per_node,
        intra=network("nvlink4" if gpu else "pcie4"), inter=network("ib-ndr" if gpu else "eth-25g"),
    )
    for row in rows:
        row["workers"] = row["gpus"]
        row["predicted"] = True
    return results.write_result(out / "forecast-scaling.json", "forecast",
                                result_object(rows, kind="forecast", model=plan.forecast_model))
