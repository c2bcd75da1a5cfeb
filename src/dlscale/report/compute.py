"""The compute a finished run spent, placed among the landmark training runs: the
``compute`` result that ``dlscale compute`` prints, the report charts and the lab quotes."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.report.landmarks import LANDMARKS, RANK_BASIS, landmark, rank_among
from dlscale.runs import results
from dlscale.units import pfs_days

DEVICE_HOURS_BASIS = "wall_seconds x world_size / 3600 (every rank's device held for the run's wall time)"
ENERGY_NOTE = ("energy_kwh is null: no power was sampled (dlscale reads GPU power through nvidia-ml-py "
               "during CUDA runs; CPUs and runs without it have no figure)")
CHART_NOTE = "install matplotlib for the chart (--chart skipped)"


def _number(summary: dict[str, Any], key: str, path: Path, *, required: bool) -> float | None:
    value = summary.get(key)
    if value is None:
        if required:
            raise UserError(f"{path} has no '{key}': it is not a finished dlscale run")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{path}: '{key}' is {value!r}, not a non-negative number; the file is corrupt")
    return float(value)


def compute_report(run_dir: str | Path) -> dict[str, Any]:
    """The ``compute`` result for one finished run directory."""
    run_dir = Path(run_dir)
    summary = results.read_summary(run_dir)
    path = run_dir / "summary.json"
    total_flops = _number(summary, "total_flops", path, required=True)
    assert total_flops is not None
    run_pfs = pfs_days(total_flops)
    notes: list[str] = []
    recorded = _number(summary, "pfs_days", path, required=False)
    if recorded is not None and not math.isclose(recorded, run_pfs, rel_tol=1e-9, abs_tol=0.0):
        notes.append(f"summary.json says pfs_days {recorded:.6g}; recomputed from total_flops: {run_pfs:.6g} (used)")
    wall = _number(summary, "wall_seconds", path, required=False)
    world = _number(summary, "world_size", path, required=False) or 1.0
    device_hours = wall * world / 3600 if wall is not None else None
    if device_hours is None:
        notes.append("device_hours is null: summary.json has no wall_seconds")
    energy = summary.get("energy_kwh")
    if energy is None:
        notes.append(ENERGY_NOTE)
    alexnet, gpt3 = landmark("AlexNet").pfs_days, landmark("GPT-3 175B").pfs_days
    return results.stamp("compute", {
        "run_dir": str(run_dir),
        "model": summary.get("model"),
        "data": summary.get("data"),
        "device": summary.get("device"),
        "world_size": int(world),
        "total_flops": total_flops,
        "pfs_days": run_pfs,
        "device_hours": device_hours,
        "device_hours_basis": DEVICE_HOURS_BASIS,
        "energy_kwh": energy,
        "landmarks": [entry.as_dict() for entry in LANDMARKS],
        "rank_among_landmarks": rank_among(run_pfs),
        "rank_among_landmarks_basis": f"{RANK_BASIS}, of {len(LANDMARKS)}",
        "fraction_of_alexnet": run_pfs / alexnet,
        "fraction_of_gpt3": run_pfs / gpt3,
        "year": _run_year(path),
        "chart": None,
        "notes": notes,
    })


def _run_year(summary_path: Path) -> int:
    try:
        return _dt.datetime.fromtimestamp(summary_path.stat().st_mtime).year
    except OSError:
        return _dt.date.today().year


def have_matplotlib() -> bool:
    """Whether charts can be drawn: matplotlib is a dependency, but an install may lack it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def add_chart(report: dict[str, Any], path: str | Path) -> None:
    """Draw the landmarks with this run to ``path`` and name it in ``report["chart"]``; without
    matplotlib, say so in the report's notes instead."""
    if not have_matplotlib():
        report["notes"].append(CHART_NOTE)
        return
    from dlscale.report.plots import compute_chart_file

    label = f"{report['model'] or 'run'} ({Path(report['run_dir']).name})"
    try:
        report["chart"] = str(compute_chart_file([(label, report["year"], report["pfs_days"])], path))
    except OSError as exc:
        raise UserError(f"cannot write the chart {path}: {exc}") from None
