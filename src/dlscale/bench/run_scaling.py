"""``dlscale bench scaling`` as library calls, for the command and the lab alike: the
launcher starts each worker count once per repeat, the counts interleaved (workers
re-enter as ``dlscale bench scaling --worker-of RUN_DIR``), combines each count's repeats
into one row and writes bench-scaling.json; each worker measures its share and rank 0
hands its repeat's row back through the run directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlscale.bench.train import Setting, Workload, resolve_settings, workload_for
from dlscale.errors import UserError
from dlscale.hardware.device import resolve_device
from dlscale.models import model_info
from dlscale.progress import SweepProgress


@dataclass(frozen=True)
class ScalingBenchRequest:
    """What to measure at each worker count; None leaves a setting to the resolver."""

    nproc: tuple[int, ...] = (1, 2)  # worker counts, ascending
    model: str = "cnn"
    data: str = "synthetic"
    batch_size: int = 32  # per worker (weak scaling) or global (strong)
    strong: bool = False
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool | None = None
    steps: int = 10
    warmup: int = 3
    repeats: int = 3  # launches per worker count, interleaved across counts
    timeout: float = 300.0
    run_dir: str | None = None


def setting_and_workload(request: ScalingBenchRequest, per_worker_batch: int) -> tuple[Workload, Setting, torch.device]:
    """The workload, and the setting ``dlscale train`` would pick here; compile stays off:
    each worker count would compile anew."""
    info = model_info(request.model)
    workload = workload_for(info, request.data)
    device = resolve_device(request.device, int(os.environ.get("LOCAL_RANK", 0)))
    chosen = resolve_settings(workload, device, per_worker_batch, request.precision, False, request.channels_last)
    return workload, Setting(per_worker_batch, chosen.precision, False, chosen.channels_last), device


def row_file(run_dir: Path, workers: int) -> Path:
    """Where rank 0 of a worker count leaves its row for the launcher (removed once read)."""
    return Path(run_dir) / f"scaling-{workers}.json"


def run_scaling_worker(request: ScalingBenchRequest, run_dir: Path, per_worker_batch: int) -> None:
    """One worker of one worker count: measure, and (rank 0) leave the row in ``run_dir``."""
    from dlscale.bench.scaling import measure_workers
    from dlscale.distributed import process_group as dist
    from dlscale.distributed.env import detect
    from dlscale.runs.files import write_json

    workload, setting, device = setting_and_workload(request, per_worker_batch)
    dist.init(detect(), device, request.timeout)
    try:
        row = measure_workers(workload, setting, device, request.steps, request.warmup)
        if dist.is_main():
            write_json(row_file(run_dir, row["workers"]), row)
    finally:
        dist.shutdown()


def run_bench_scaling(
    request: ScalingBenchRequest, say: Callable[[str], None] = lambda _text: None, *, progress: SweepProgress | None = None,
) -> tuple[dict[str, Any], Path]:
    """Measure every worker count, write bench-scaling.json, and return its result object
    and path; ``progress`` hears each launch start and finish, else ``say`` hears each start."""
    from dlscale.bench.common import bench_run_dir, result_object, write_result
    from dlscale.bench.reliability import Interference
    from dlscale.bench.scaling import add_speedup, combine_repeats, interleaved_schedule
    from dlscale.distributed.elastic import LaunchPlan, launch
    from dlscale.runs.directory import create_run_dir

    counts = sorted(request.nproc)
    if request.strong:
        bad = [n for n in counts if request.batch_size % n]
        if bad:
            raise UserError(f"--strong keeps the global batch {request.batch_size}: it does not split over {bad} workers")
    workload, setting, device = setting_and_workload(request, request.batch_size)  # validates model, data, device
    if device.type == "cuda" and counts[-1] > torch.cuda.device_count():
        raise UserError(f"--nproc {counts[-1]} needs {counts[-1]} GPUs; this machine has {torch.cuda.device_count()}")
    if device.type == "cpu" and counts[-1] > (os.cpu_count() or 1):
        say(f"note: {counts[-1]} workers share {os.cpu_count()} CPU cores: expect efficiency to fall for that reason")
    run_dir = create_run_dir(bench_run_dir("scaling", workload.info.name, request.run_dir))

    interference = Interference.snapshot()
    schedule = interleaved_schedule(counts, request.repeats)
    announce = progress is None  # without a display, ``say`` names each launch
    progress = progress or SweepProgress(None)
    progress.set_total(len(schedule))
    repeats: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for n in schedule:
        per_worker = request.batch_size // n if request.strong else request.batch_size
        repeat = len(repeats[n]) + 1
        label = f"{n} worker(s), batch {per_worker} each, repeat {repeat}/{request.repeats}"
        if announce:
            say(f"measuring {label} ...")
        progress.start(label)
        worker_args = [
            "bench", "scaling", "--worker-of", str(run_dir), "--per-worker-batch", str(per_worker),
            "--model", request.model, "--data", request.data, "--precision", setting.precision, "--device", device.type,
            "--channels-last" if setting.channels_last else "--no-channels-last",
            "--steps", str(request.steps), "--warmup", str(request.warmup),
            "--timeout", str(request.timeout), "--batch-size", str(request.batch_size),
        ]
        launch(worker_args, LaunchPlan(nproc=n), log_dir=run_dir / "logs" / f"{n}-workers" / f"repeat-{repeat}")
        handed_back = row_file(run_dir, n)
        repeats[n].append(json.loads(handed_back.read_text()))
        handed_back.unlink()
        progress.finish(f"{per_worker * n / repeats[n][-1]['step_time_s']:,.0f} samples/s")
    rows = add_speedup([combine_repeats(repeats[n]) for n in counts], request.strong)
    for row in rows:
        row.update(model=workload.info.name, precision=setting.precision, device=device.type)

    result = result_object(rows, kind="scaling", interference=interference, spread="samples_per_second",
                           mode="strong" if request.strong else "weak")
    return result, write_result(run_dir, "scaling", result)
