"""``dlscale lab``: the classic figures of "why supercomputing matters to deep learning",
measured on this machine and written as one report.

(a) the same training on the CPU and, when there is one, on the GPU, with the speedup;
(b) speedup vs number of workers: measured for the workers this machine has, predicted
    beyond it by the communication model (marked as predicted);
(c) predictions/s per device and precision;
(d) the compute chart: the lab's own runs among the landmark models.

Every step is an ordinary dlscale command run in this process, writing its usual run
directory under the lab folder; the report is built from those files only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dlscale.runs import directory as runs
from dlscale.errors import UserError


@dataclass(frozen=True)
class LabPlan:
    """How big each experiment is: --quick fits 2 minutes on 2 CPU cores."""

    train_args: list[str]  # the accuracy run (loss curves, compute chart)
    bench_model: list[str]  # model and data of the CPU-vs-GPU training benchmark
    bench_steps: str
    scaling_model: list[str]
    infer_model: list[str]
    infer_batches: str  # on GPUs; CPUs stop at 32 (a 256-image batch of resnet18 takes seconds there)
    predict_model: str
    predict_batch: int


QUICK = LabPlan(
    train_args=["--model", "cnn", "--data", "digits", "--epochs", "5"],
    bench_model=["--model", "cnn", "--batch-size", "64"],
    bench_steps="10",
    scaling_model=["--model", "cnn", "--batch-size", "32"],
    infer_model=["--model", "cnn"],
    infer_batches="1,64",
    predict_model="cnn",
    predict_batch=32,
)
FULL = LabPlan(
    train_args=["--model", "cnn", "--data", "digits", "--epochs", "10"],
    bench_model=["--model", "resnet18", "--data", "synthetic:3x32x32", "--batch-size", "128"],
    bench_steps="10",
    scaling_model=["--model", "resnet18", "--data", "synthetic:3x32x32", "--batch-size", "64"],
    infer_model=["--model", "resnet18", "--input-shape", "3x32x32"],
    infer_batches="1,32,256",
    predict_model="resnet18",
    predict_batch=64,
)


def _dlscale(args: list[str]) -> None:
    """Run one dlscale command in this process; a failure stops the lab with its message."""
    from dlscale.cli import main

    code = main(args)
    if code != 0:
        raise UserError(f"the lab step 'dlscale {' '.join(args[:2])}' failed (exit code {code}); see the line above")


def _result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_lab(out: Path, quick: bool, say: Callable[[str], None]) -> Path:
    plan = QUICK if quick else FULL
    gpu = torch.cuda.is_available()
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    start = time.perf_counter()
    inputs: list[Path] = []
    notes: list[str] = []

    say("lab (a): training on " + " and ".join(devices))
    train_dir = out / "train"
    _dlscale(["train", *plan.train_args, "--device", devices[-1], "--run-dir", str(train_dir)])
    inputs.append(train_dir)
    speeds: dict[str, float] = {}
    for device in devices:
        bench_dir = out / f"bench-train-{device}"
        precision = "fp32" if device == "cpu" else "auto"
        _dlscale(["bench", "train", *plan.bench_model, "--device", device, "--precision", precision,
                  "--steps", plan.bench_steps, "--repeats", "3", "--run-dir", str(bench_dir)])
        speeds[device] = _result(bench_dir / "bench-train.json")["results"][0]["samples_per_second"]
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
    _dlscale(["bench", "scaling", "--nproc", ",".join(map(str, workers)), *plan.scaling_model,
              "--device", devices[-1], "--steps", "5", "--repeats", "2", "--run-dir", str(scaling_dir)])
    inputs.append(scaling_dir)
    measured = _result(scaling_dir / "bench-scaling.json")["results"]
    predicted_path = _predict_beyond(out, plan, measured, gpu)
    inputs.append(predicted_path)
    notes.append(
        "Predicted points (hollow, dashed) come from dlscale's communication model with this machine's "
        "measured one-worker speed, " + ("8 GPUs per node on NVLink 4 and InfiniBand NDR between nodes."
                                         if gpu else "one worker per node on 25 Gb/s Ethernet.")
    )

    say("lab (c): predictions/s per device and precision")
    for device in devices:
        infer_dir = out / f"bench-infer-{device}"
        precisions = "fp32,bf16,int8" if device == "cpu" else "fp32,bf16,fp16"
        batches = plan.infer_batches if device == "cuda" else ",".join(b for b in plan.infer_batches.split(",") if int(b) <= 64)
        _dlscale(["bench", "infer", *plan.infer_model, "--device", device, "--batch-sizes", batches,
                  "--precisions", precisions, "--run-dir", str(infer_dir)])
        inputs.append(infer_dir)

    say("lab (d): the compute chart")
    from dlscale.cli.compute import compute_report

    compute = compute_report(train_dir)
    notes.append(f"The lab's training run used {compute['pfs_days']:.3g} petaflop/s-days "
                 f"({compute['fraction_of_alexnet']:.2g} of AlexNet's compute).")
    notes.append(f"The lab took {time.perf_counter() - start:.0f} s.")

    from dlscale.report.html import build_report
    from html import escape

    section = "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
    report = build_report(inputs, out / "report.html", title="dlscale lab: what the hardware buys",
                          extra_sections=[("The lab in a few lines", section)], plots_dir=out / "figures")
    runs.write_json(out / "lab.json", {"notes": notes, "inputs": [str(p) for p in inputs], "quick": quick})
    return report


def _worker_counts(gpu: bool) -> list[int]:
    import os

    have = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    counts = [1]
    while counts[-1] * 2 <= have:
        counts.append(counts[-1] * 2)
    return counts if len(counts) > 1 else [1, 2]


def _predict_beyond(out: Path, plan: LabPlan, measured: list[dict[str, Any]], gpu: bool) -> Path:
    """Predicted speedup for worker counts this machine does not have (the model of `dlscale predict`)."""
    from dlscale.bench.common import result_object
    from dlscale.models import build_model, model_info
    from dlscale.forecast.model import network, predict

    info = model_info(plan.predict_model)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(plan.predict_model, info.default_input_shape, info.default_num_classes).parameters())
    one = min(measured, key=lambda r: r["workers"])
    largest = max(r["workers"] for r in measured)
    counts = [largest * 2 ** k for k in range(1, 6)]
    per_node = 8 if gpu else 1
    rows = predict(
        params=params, flops_per_sample=None, per_gpu_batch=plan.predict_batch,
        single_throughput=one["samples_per_second"], gpus_list=[1, *counts], gpus_per_node=per_node,
        intra=network("nvlink4" if gpu else "pcie4"), inter=network("ib-ndr" if gpu else "eth-25g"),
    )
    for row in rows:
        row["workers"] = row["gpus"]
        row["predicted"] = True
    path = out / "predicted-scaling.json"
    runs.write_json(path, result_object(rows, kind="predict", model=plan.predict_model))
    return path
