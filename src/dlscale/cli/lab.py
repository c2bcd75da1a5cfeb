"""``dlscale lab``: the classic figures (CPU vs GPU, speedup vs workers, predictions/s per
device, the compute chart) measured on this machine and written as one HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lab",
        help="the classic figures, measured on this hardware, as one report",
        description=(
            "Reproduce the classic figures of why supercomputing matters to deep learning on this "
            "machine: (a) the same training on CPU and GPU with the speedup, (b) speedup vs workers, "
            "measured and predicted beyond, (c) predictions/s per device and precision, (d) the "
            "lab's compute among landmark models. Writes every run and DIR/report.html."
        ),
    )
    p.add_argument("-o", "--output", metavar="DIR", help="lab folder (default runs/<UTC-time>-lab)")
    p.add_argument("--quick", action="store_true", help="small workloads: under 2 minutes on 2 CPU cores")
    p.set_defaults(handler=run)


LAB_EXPERIMENTS = 4  # run_lab announces (a) training, (b) scaling, (c) inference, (d) the compute chart


def run(args: argparse.Namespace) -> int:
    from dlscale.runs import directory as runs
    from dlscale.report.lab import run_lab
    from dlscale.progress import SweepProgress, make_console

    out = Path(args.output) if args.output else runs.default_run_dir("lab", "quick" if args.quick else "full")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"lab folder {out} already exists and is not empty; give -o a new folder")
    runs.create_run_dir(out)
    console = make_console()
    with SweepProgress(console, total=LAB_EXPERIMENTS) as progress:  # each announced experiment is a setting
        report = run_lab(out, args.quick, progress.start, detail=progress.say)
    console.print(f"lab report: {report}")
    return 0
