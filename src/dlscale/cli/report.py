"""``dlscale report RUN_DIR_OR_JSON... -o report.html``: one self-contained HTML report.

Inputs are run directories, bench run directories (bench-*.json) or JSON files (a bench
result, ``forecast --json`` or ``compute --json`` output). The report embeds its plots as
data URIs and needs nothing else to open, offline. Prints the report's path.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML report (tables, provenance, plots) of runs and bench results",
        description=(
            "Write one HTML file with summary tables, provenance and plots of every given run "
            "directory, bench run directory (bench-*.json) or result JSON file (bench result, "
            "'forecast --json' or 'compute --json' output saved to a file). Images are embedded: the "
            "file has no external assets, opens offline and prints."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_JSON", help="run directories, bench run directories or JSON result files")
    p.add_argument("-o", "--output", default="report.html", metavar="FILE", help="the HTML file to write (default report.html)")
    p.add_argument("--title", default="dlscale report", help="the report's title (default 'dlscale report')")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dlscale.report.html import build_report

    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o {out} is a directory: give a file name, e.g. -o {out / 'report.html'}")
    for raw in args.inputs:
        if not Path(raw).exists():
            raise UserError(f"{raw} does not exist: give run directories, bench run directories or JSON files")
    path = build_report([Path(p) for p in args.inputs], out, title=args.title)
    print(path, flush=True)
    return 0
