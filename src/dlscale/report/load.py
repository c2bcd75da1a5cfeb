"""The report's inputs: run directories, bench run directories and result files, each
identified by ``runs.results`` (by its ``kind``, or an old file by its name), never by
guessing from its keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.runs import results
from dlscale.runs.metrics_log import read_metrics

RUN = "run"  # the item of a run: its summary.json, with the metrics, config and machine beside it
# the result kinds a report shows, besides a run's summary
REPORTED_KINDS = (*results.BENCH_KINDS, "forecast", "compute")


@dataclass
class Item:
    """One input, identified."""

    kind: str  # run, train, infer, scaling, forecast, comm, compute
    source: Path
    data: dict[str, Any]
    run_dir: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config_text: str | None = None
    hardware: dict[str, Any] | None = None


def _identified(path: Path) -> tuple[str, dict[str, Any]]:
    """The item kind and object of one result file (it may be a saved --json stdout)."""
    result = results.read_result(path, saved_stdout=True)
    if result.kind == "summary":
        return RUN, result.data
    if result.kind not in REPORTED_KINDS:
        raise UserError(
            f"{path} holds {results.KIND_NAMES[result.kind]}, which a report does not show on its own; give run "
            "directories, bench-*.json, or forecast/compute --json output"
        )
    return result.kind, result.data


def load_run(run_dir: Path) -> Item:
    """A run directory: its summary, and the metrics, config and hardware it holds."""
    summary = results.read_result(run_dir / "summary.json", kinds=("summary",), saved_stdout=True).data
    item = Item(RUN, run_dir, summary, run_dir=run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        try:
            item.metrics = read_metrics(metrics)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {metrics}: {exc}") from None
    config = run_dir / "config.toml"
    if config.is_file():
        try:
            item.config_text = config.read_text(encoding="utf-8")  # shown as written
        except (OSError, UnicodeDecodeError):
            item.config_text = None
    item.hardware = results.read_hardware(run_dir)
    return item


def load_inputs(inputs: list[Path]) -> list[Item]:
    """Identify every input; a missing, unreadable or unknown one is a UserError naming it."""
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist: give run directories, bench run directories or JSON files")
        if path.is_dir():
            if (path / "summary.json").is_file():
                items.append(load_run(path))
                continue
            benches = sorted(path.glob("bench-*.json"))
            if not benches:
                raise UserError(f"{path} holds no summary.json and no bench-*.json: not a finished run or bench result")
            for bench in benches:
                kind, data = _identified(bench)
                items.append(Item(kind, bench, data))
            continue
        kind, data = _identified(path)
        if kind == RUN and path.name == "summary.json":
            items.append(load_run(path.parent))
        else:
            items.append(Item(kind, path, data))
    if not items:
        raise UserError("nothing to report: give at least one run directory or result file")
    return items
