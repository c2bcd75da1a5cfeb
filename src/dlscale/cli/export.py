"""``dlscale export RUN --format safetensors|pt2|onnx -o PATH``: the trained model as one
file for other tools, checked against the eager model (``dlscale.inference.export``)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from dlscale.inference import FORMATS, TOLERANCE


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a trained model as safetensors, a torch.export program (pt2) or ONNX",
        description=textwrap.fill(
            "Write the model of a trained run to one file: safetensors (weights, with the model spec "
            "in the file's metadata), pt2 (a torch.export program: torch.export.load(PATH).module()) "
            "or onnx (needs onnx and onnxscript). The file is loaded again and run on a batch before it "
            "is kept; its outputs must match the model's within "
            + ", ".join(f"{fmt} {tol:g}" for fmt, tol in TOLERANCE.items())
            + " (max abs diff, fp32 on the CPU). The run directory is only read.",
            width=88,
        ),
        epilog=(
            "examples:\n"
            "  dlscale export runs/my-run --format onnx -o model.onnx\n"
            "  dlscale export runs/my-run --format pt2 -o model.pt2 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by dlscale train")
    p.add_argument("--format", dest="fmt", required=True, choices=FORMATS, help="the file format")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the file to write (not inside the run)")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last stdout line")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dlscale.inference.export import export
    from dlscale.runs.files import to_json

    result = export(args.run_dir, args.fmt, args.output, force=args.force)
    print(describe(result), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(to_json(result), flush=True)
    return 0


def describe(result: dict[str, Any]) -> str:
    from dlscale.units import format_bytes

    if result["max_abs_diff"] is None:
        checked = f"checked with {result['checked_with']}"
    else:
        checked = f"checked: max diff vs eager {result['max_abs_diff']:.2g} <= {result['tolerance']:g} on {len(result['checked_on'])} batches"
    shape = ""  # safetensors: the rebuilt model takes any batch
    if result["dynamic"] == []:
        shape = ", fixed input shape"
    elif result["dynamic"]:
        shape = f", dynamic {' and '.join(result['dynamic'])}"
    return f"{result['format']} {result['path']} ({format_bytes(result['bytes'])}{shape}); {checked}"
