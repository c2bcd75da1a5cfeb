"""``dlscale bench``: the benchmark family. Each kind is a module of this package
(bench_train, bench_infer, ...) with ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

from typing import Any

from dlscale.cli import bench_comm, bench_data, bench_infer, bench_scaling, bench_serve, bench_train


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmarks: training throughput, inference speed, collective bandwidth, serving, input pipeline",
        description="Measure what the hardware buys: warm-up excluded, repeats with median and spread, provenance stored.",
    )
    kinds = p.add_subparsers(dest="bench_kind", metavar="KIND", parser_class=type(p))
    for kind in (bench_train, bench_infer, bench_comm, bench_scaling, bench_serve, bench_data):
        kind.add_parser(kinds)
    p.set_defaults(handler=lambda args: _missing_kind(p))


def _missing_kind(parser) -> int:
    parser.print_help()
    return 2
