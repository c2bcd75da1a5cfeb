"""``dlscale forecast``: forecast data-parallel step time, throughput, speedup and efficiency
on N GPUs, from the model's size, the single-GPU speed and the network. The flags become a
``ForecastRequest`` for ``dlscale.forecast.run.run_forecast``; this module parses and prints.
(It was ``dlscale predict`` until that name went to inference with a trained run.)

Human output is a rich table on stderr; ``--json`` prints one object (provenance, the
assumptions, and ``results``: one row per GPU count) as the last line of stdout.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_parser(subparsers: Any) -> None:
    from dlscale.forecast.model import ASSUMPTIONS, GRAD_BYTES
    from dlscale.forecast.networks import NETWORKS

    intra = ", ".join(n for n, v in NETWORKS.items() if v.scope == "intra")
    inter = ", ".join(n for n, v in NETWORKS.items() if v.scope == "inter")
    p = subparsers.add_parser(
        "forecast",
        help="forecast step time, throughput, speedup and efficiency on N GPUs (alpha-beta all-reduce model)",
        description=(
            "Forecast how a data-parallel (DDP) training job scales to N GPUs on a cluster this machine cannot "
            "reach: step time, samples/s, speedup and efficiency per GPU count, from the model's parameter "
            "count, the single-GPU speed and the network. Validated against Goyal et al. 2017 (ResNet-50, 256 "
            "P100), Horovod (Inception V3, ResNet-101, VGG-16 at 128-512 GPUs) and NVIDIA's DeepLearningExamples "
            "(DGX A100 and V100, 8-256 GPUs) within 0.05 of the published efficiency where the input pipeline "
            "does not bound the run (tests/forecast/test_forecast.py)."
        ),
        epilog=(
            "assumptions:\n" + "\n".join(f"  - {a}" for a in ASSUMPTIONS) + "\n\n"
            f"intra-node presets (per-GPU bus bandwidth): {intra}\n"
            f"inter-node presets (per NIC): {inter}\n\n"
            "examples:\n"
            "  dlscale forecast --model resnet50 --gpus 1,8,64 --network ib-hdr --single-throughput 1200\n"
            "  dlscale forecast --model gpt-small --gpus 8,64,512 --network ib-ndr --intra-network nvlink4 \\\n"
            "      --device 'NVIDIA H100 80GB HBM3' --mfu 0.4 --precision bf16 --batch-size 16 --json\n"
            "  dlscale forecast --list-networks"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--model", help="a zoo model (counted on the meta device: no memory, no weights)")
    add("--params", type=int, help="parameter count, overriding the model's")
    add("--flops-per-sample", type=float, help="training FLOPs per sample, overriding the model's count")
    add("--batch-size", type=int, default=32, help="per-GPU batch (default 32; weak scaling)")
    add("--single-throughput", type=float, metavar="SAMPLES_PER_S", help="one GPU's measured training samples/s (default with --model: measured now on this machine's best device)")
    add("--device", help="a GPU name for its datasheet peak (as torch names it, e.g. 'NVIDIA A100-SXM4-80GB')")
    add("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation with --device (default 0.4)")
    add("--precision", default="fp32", choices=tuple(GRAD_BYTES), help="compute precision: the datasheet peak with --device (default fp32)")
    add("--grad-precision", default="fp32", choices=tuple(GRAD_BYTES), help="the parameters' and so the all-reduced gradients' precision (default fp32, also under AMP, which keeps fp32 parameters)")
    add("--grad-accum", type=int, default=1, help="micro-steps per optimizer step; the all-reduce runs once per step (default 1)")
    add("--input-rate", type=float, metavar="SAMPLES_PER_S", help="samples/s one node's data loaders deliver (e.g. from 'dlscale bench data'); default: the input never waits")
    add("--gpus", default="1,8,64", help="comma-separated GPU counts (default 1,8,64)")
    add("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    add("--nics-per-node", type=int, default=1, help="inter-node NICs per node, sharing the traffic (default 1)")
    add("--network", default="ib-hdr", help=f"inter-node preset (default ib-hdr): {inter}")
    add("--intra-network", default="nvlink3", help=f"intra-node preset (default nvlink3, A100 HGX): {intra}")
    add("--bandwidth", type=float, metavar="GB/s", help="inter-node bandwidth per NIC in GB/s (1e9 B/s), overriding --network")
    add("--latency", type=float, metavar="US", help="inter-node latency per ring step in microseconds (with --bandwidth; default the preset's)")
    add("--overlap", type=float, default=None, help="share of the backward pass over which gradients become ready for the all-reduce (default 1.0: all of it)")
    add("--overhead-ms", type=float, default=None, help="constant overhead per multi-GPU step in ms (default 2)")
    add("--jitter", type=float, default=None, help="step-time coefficient of variation for the straggler term (default 0.02)")
    add("--calibrate-comm", metavar="BENCH_COMM", help="a 'dlscale bench comm' result (file or run dir): its measured all-reduce bandwidth and latency become the intra-node link")
    add("--calibrate-scaling", metavar="BENCH_SCALING", help="a 'dlscale bench scaling' result: its one-worker speed (unless --single-throughput) and a per-step overhead fitted to its measured efficiency")
    add("--list-networks", action="store_true", help="print the network presets with their sources and exit")
    add("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(handler=run)


def forecast_option_strings() -> set[str]:
    """Every flag of ``dlscale forecast`` (but argparse's own -h/--help), read from its parser,
    so a command that is given forecast's flags by mistake can say to use forecast."""
    subparsers = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_parser(subparsers)
    forecast = subparsers.choices["forecast"]
    return {s for a in forecast._actions if not isinstance(a, argparse._HelpAction) for s in a.option_strings}


def run(args: argparse.Namespace) -> int:
    from dlscale.bench.common import result_object
    from dlscale.forecast.inputs import gpu_counts
    from dlscale.forecast.model import ASSUMPTIONS
    from dlscale.forecast.networks import NETWORKS
    from dlscale.forecast.run import ForecastRequest, run_forecast
    from dlscale.progress import make_console
    from dlscale.runs.files import to_json

    console = make_console()
    if args.list_networks:
        _print_networks(console)
        if args.json:
            print(to_json({"networks": [vars(n) for n in NETWORKS.values()]}), flush=True)
        return 0

    request = ForecastRequest(
        gpus=gpu_counts(args.gpus), batch_size=args.batch_size, precision=args.precision,
        gpus_per_node=args.gpus_per_node, nics_per_node=args.nics_per_node, network=args.network,
        intra_network=args.intra_network, mfu=args.mfu, model=args.model, params=args.params,
        flops_per_sample=args.flops_per_sample, single_throughput=args.single_throughput, device=args.device,
        bandwidth=args.bandwidth, latency=args.latency, overlap=args.overlap, overhead_ms=args.overhead_ms,
        jitter=args.jitter, calibrate_comm=args.calibrate_comm, calibrate_scaling=args.calibrate_scaling,
        grad_precision=args.grad_precision, grad_accum=args.grad_accum, input_rate=args.input_rate,
    )
    forecast = run_forecast(request, say=console.print)
    _print_rows(console, forecast.rows, forecast.inputs)
    if args.json:
        print(to_json(result_object(forecast.rows, kind="forecast", inputs=forecast.inputs, assumptions=list(ASSUMPTIONS))), flush=True)
    return 0


def _print_networks(console: Any) -> None:
    from rich.table import Table

    from dlscale.forecast.networks import NETWORKS

    table = Table(title="network presets (bandwidth: achievable, one direction)", title_justify="left")
    for column in ("name", "scope", "GB/s", "latency", "source"):
        table.add_column(column, no_wrap=column != "source")
    for n in NETWORKS.values():
        table.add_row(n.name, n.scope, f"{n.bandwidth / 1e9:g}", f"{n.latency * 1e6:g} us", n.source)
    console.print(table)


def _print_rows(console: Any, rows: list[dict[str, Any]], inputs: dict[str, Any]) -> None:
    from rich.table import Table

    title = (f"forecast weak scaling: {inputs['model'] or 'model'} ({inputs['params'] / 1e6:.1f}M params, "
             f"{inputs['grad_precision']} gradients), {inputs['batch_size']}/GPU, "
             f"{inputs['gpus_per_node']} GPUs/node, {inputs['intra_network']['name']} within / "
             f"{inputs['inter_network']['name']} between nodes")
    from rich import box

    # no side rules and single spaces between columns: the table fits an 80-column terminal
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("GPUs", "nodes", "step ms", "samples/s", "speedup", "efficiency", "comm ms", "exposed ms"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["gpus"]), str(r["nodes"]), f"{r['step_time_s'] * 1e3:.1f}", f"{r['samples_per_second']:,.0f}",
            f"{r['speedup']:.1f}", f"{r['efficiency']:.1%}", f"{r['comm_s'] * 1e3:.1f}", f"{r['comm_exposed_s'] * 1e3:.1f}",
        )
    console.print(table)
    console.print(f"single GPU: {inputs['single_throughput_source']}")
    bound = [str(r["gpus"]) for r in rows if r.get("input_bound")]
    if bound:
        console.print(f"[yellow]input-bound at {', '.join(bound)} GPUs: the node's loaders deliver "
                      f"{inputs['input_rate']:,.0f} samples/s, fewer than its GPUs train[/yellow]")
    console.print("a model, not a measurement: see 'dlscale forecast --help' for its assumptions")
    if any(not math.isfinite(r["efficiency"]) for r in rows):  # defensive: never print nan silently
        console.print("[yellow]some forecasts are not finite; check the inputs[/yellow]")
