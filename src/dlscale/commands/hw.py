"""``dlscale hw``: the devices of this machine, their datasheet and measured peaks."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("hw", help="devices, datasheet and measured peaks")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("dlscale hw is being written")
