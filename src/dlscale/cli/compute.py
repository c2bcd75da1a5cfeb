"""``dlscale compute RUN_DIR``: the compute a finished run spent, placed among landmarks.

Reads the run's summary.json. Human output is a rich table on stderr; ``--json`` adds one
JSON object as the last line of stdout (the ``compute`` object of DESIGN.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from dlscale.errors import UserError

DEVICE_HOURS_BASIS = "wall_seconds x world_size / 3600 (every rank's device held for the run's wall time)"
ENERGY_NOTE = ("energy_kwh is null: no power was sampled (dlscale reads GPU power through nvidia-ml-py "
               "during CUDA runs; CPUs and runs without it have no figure)")
CHART_NOTE = "install matplotlib for the chart (--chart skipped)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compute",
        help="compute a run spent (PF/s-days) against landmark models",
        description=(
            "Read a finished run's summary.json and report its total FLOPs, petaflop/s-days "
            "(FLOPs / 8.64e19), device-hours and where it stands among landmark training runs "
            "(OpenAI's AI and Compute chart, 2012-2017, and GPT-3)."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (holds summary.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--chart", metavar="PATH", default=None, help="write a log-scale chart of the landmarks and this run (needs matplotlib)")
    p.set_defaults(handler=run)


def _number(summary: dict[str, Any], key: str, path: Path, *, required: bool) -> float | None:
    value = summary.get(key)
    if value is None:
        if required:
            raise UserError(f"{path} has no '{key}': it is not a finished dlscale run")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{path}: '{key}' is {value!r}, not a non-negative number; the file is corrupt")
    return float(value)


def read_summary(run_dir: Path) -> dict[str, Any]:
    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no summary.json: it is not a finished run")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path} does not hold a JSON object; the file is corrupt")
    return summary


def compute_report(run_dir: str | Path) -> dict[str, Any]:
    """The ``compute`` object for one finished run directory."""
    from dlscale.report.landmarks import LANDMARKS, RANK_BASIS, landmark, pfs_days, rank_among

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
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
    return {
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
    }


def _run_year(summary_path: Path) -> int:
    try:
        return _dt.datetime.fromtimestamp(summary_path.stat().st_mtime).year
    except OSError:
        return _dt.date.today().year


def run(args: argparse.Namespace) -> int:
    from dlscale.report.landmarks import compute_chart, have_matplotlib
    from dlscale.progress import make_console
    from dlscale.runs.directory import to_json

    report = compute_report(args.run_dir)
    chart = getattr(args, "chart", None)
    if chart:
        if have_matplotlib():
            label = f"{report['model'] or 'run'} ({Path(report['run_dir']).name})"
            try:
                report["chart"] = str(compute_chart([(label, report["year"], report["pfs_days"])], chart))
            except OSError as exc:
                raise UserError(f"cannot write the chart {chart}: {exc}") from None
        else:
            report["notes"].append(CHART_NOTE)
    print_report(make_console(), report)
    if args.json:
        print(to_json(report), flush=True)
    return 0


# --------------------------------------------------------------------------- display


def _times(fraction: float, name: str) -> str:
    if fraction >= 1:
        return f"{fraction:.3g}x {name}'s compute"
    return f"{fraction:.2g} of {name}'s compute"


def print_report(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    from dlscale.report.landmarks import LANDMARKS, nearest

    table = Table(title=f"compute of {report['run_dir']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    dh = report["device_hours"]
    for key, value in (
        ("total FLOPs", f"{report['total_flops']:.4g}"),
        ("petaflop/s-days", f"{report['pfs_days']:.4g}"),
        ("device-hours", "-" if dh is None else f"{dh:.4g} ({report['world_size']} x {report['device'] or '?'})"),
        ("energy", "- (not sampled)" if report["energy_kwh"] is None else f"{report['energy_kwh']:.4g} kWh (GPU power readings)"),
        ("rank among landmarks", f"{report['rank_among_landmarks']}: used more compute than {report['rank_among_landmarks']} of {len(LANDMARKS)} landmarks"),
        ("vs AlexNet", _times(report["fraction_of_alexnet"], "AlexNet")),
        ("vs GPT-3 175B", _times(report["fraction_of_gpt3"], "GPT-3 175B")),
    ):
        table.add_row(key, value)
    console.print(table)

    near = Table(title="nearest landmarks (log scale)", title_justify="left")
    for column in ("name", "year", "PF/s-days", "this run / landmark"):
        near.add_column(column, no_wrap=True)
    rows = [(e.name, str(e.year), e.pfs_days) for e in nearest(report["pfs_days"])]
    rows.append(("this run", str(report["year"]), report["pfs_days"]))
    for name, year, value in sorted(rows, key=lambda r: r[2]):
        ratio = "" if name == "this run" else f"{report['pfs_days'] / value:.3g}"
        near.add_row(name, year, f"{value:.3g}", ratio)
    console.print(near)
    console.print("1 PF/s-day = 8.64e19 FLOPs; landmarks: OpenAI AI and Compute (2018) chart values, GPT-3 from Brown et al. 2020")
    console.print(f"device-hours = {report['device_hours_basis']}")
    for note in report["notes"]:
        console.print(note)
    if report.get("chart"):
        console.print(f"chart written to {report['chart']}")
