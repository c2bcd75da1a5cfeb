"""The ``dlscale`` command: parsing and printing only. Each subcommand is a module of
this package with ``add_parser(subparsers)`` and ``run(args)``, which parses, calls one
library function and prints its result.

A user's mistake ends with one line ``error: ...`` on stderr and exit code 2, never a
traceback; ``--json`` puts one JSON object on the last line of stdout while human
output goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from dlscale.version import __version__
from dlscale.cli import bench, compute, data, export, forecast, hw, lab, launch, predict, report, serve, train
from dlscale.errors import Stopped, UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- main


def build_parser() -> Parser:
    parser = Parser(
        prog="dlscale",
        description="Train deep-learning models from a laptop CPU to a GPU cluster and measure what the hardware buys.",
    )
    parser.add_argument("--version", action="version", version=f"dlscale {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in (train, predict, export, serve, hw, bench, data, launch, forecast, compute, report, lab):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # A worker of a multi-process job, everything written and its process group left:
        # end here. Gloo's C++ threads can otherwise abort the interpreter's own shutdown
        # ("terminate called without an active exception") and turn a finished job into a
        # failed one (the upstream fix, an atexit destroy, was abandoned: pytorch#179291).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the subcommand's help, which lists its flags
            where = f"dlscale {args.command}" if args.command else "dlscale"
            raise UserError(f"unrecognized arguments: {' '.join(extra)} (see '{where} --help')")
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USER_ERROR
        return args.handler(args)
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Stopped as exc:  # a signal asked the run to stop: it saved a checkpoint first
        if not exc.said:
            print(f"dlscale: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker comes back as "Caught UserError in DataLoader
    worker process 0." plus the worker's traceback: say only what the error said."""
    lines = message.strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in message:
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith(("dlscale.errors.UserError: ", "UserError: ")) else last
    return message


if __name__ == "__main__":
    raise SystemExit(main())
