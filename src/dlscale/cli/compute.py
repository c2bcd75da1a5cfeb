"""``dlscale compute RUN_DIR``: the compute a finished run spent, placed among landmarks.

Reads the run's summary.json (``dlscale.report.compute`` works it out). Human output is a
rich table on stderr; ``--json`` adds the ``compute`` result as the last line of stdout.
"""

from __future__ import annotations

import argparse
from typing import Any


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


def run(args: argparse.Namespace) -> int:
    from dlscale.progress import make_console
    from dlscale.report.compute import add_chart, compute_report
    from dlscale.runs.files import to_json

    report = compute_report(args.run_dir)
    chart = getattr(args, "chart", None)
    if chart:
        add_chart(report, chart)
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
    for column in ("name", "year", "PF/s-days", "ratio"):  # names wrap: the table fits 80 columns
        near.add_column(column, no_wrap=column != "name", justify="left" if column == "name" else "right")
    rows = [(e.name, str(e.year), e.pfs_days) for e in nearest(report["pfs_days"])]
    rows.append(("this run", str(report["year"]), report["pfs_days"]))
    for name, year, value in sorted(rows, key=lambda r: r[2]):
        ratio = "" if name == "this run" else f"{report['pfs_days'] / value:.3g}"
        near.add_row(name, year, f"{value:.3g}", ratio)
    console.print(near)
    console.print("ratio = this run's compute / the landmark's")
    console.print("1 PF/s-day = 8.64e19 FLOPs; landmarks: OpenAI AI and Compute (2018) chart values, GPT-3 from Brown et al. 2020")
    console.print(f"device-hours = {report['device_hours_basis']}")
    for note in report["notes"]:
        console.print(note)
    if report.get("chart"):
        console.print(f"chart written to {report['chart']}")
