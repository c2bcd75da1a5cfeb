"""``dlscale bench infer`` as one library call, for the command and the lab alike: the
sweep over batch sizes, precisions and modes, and the bench-infer.json that holds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dlscale.bench.common import result_object, write_result
from dlscale.bench.infer import InferSettings, Target, benchmark
from dlscale.bench.reliability import Interference


def run_bench_infer(
    target: Target, settings: InferSettings, device: torch.device, run_dir: Path, *,
    note: Callable[[str], None] | None = None, step: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Time every setting, write bench-infer.json in ``run_dir``, and return its result
    object and path. ``note`` hears each skipped setting, ``step`` each row as it starts."""
    interference = Interference.snapshot()
    rows = benchmark(target, settings, device, note=note, step=step)
    result = result_object(
        rows, kind="infer", interference=interference, spread="predictions_per_second", model=target.name,
        run=target.source_run, input_shape=list(target.input_shape), batches=settings.batches, warmup=settings.warmup,
    )
    return result, write_result(run_dir, "infer", result)
