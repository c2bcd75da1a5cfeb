"""``dlscale predict``: predicted data-parallel step time, throughput, speedup and efficiency
on N GPUs, from the model's size, the single-GPU speed and the network (dlscale.forecast.model).

Human output is a rich table on stderr; ``--json`` prints one object (provenance, the
assumptions, and ``results``: one row per GPU count) as the last line of stdout.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from dlscale.errors import UserError

GRAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

ASSUMPTIONS = (
    "weak scaling: a fixed per-GPU batch (--batch-size), so the global batch grows with N; "
    "speedup = N x t(1) / t(N), efficiency = speedup / N",
    "compute per step T = batch / single-GPU throughput, equal on every GPU; backward = 2/3 of T",
    "gradients of params x 4 bytes (fp32) or 2 (bf16/fp16) are all-reduced once per step; nothing else moves",
    "one node: ring all-reduce over the intra-node link, 2(N-1)/N x S/B + 2(N-1) x latency (alpha-beta, B = bus bandwidth)",
    "several nodes: hierarchical, intra-node reduce-scatter + all-gather around g concurrent inter-node rings "
    "of S/g bytes that share the node's NICs: 2(n-1)/n x S/(nics x B_node) + 2(n-1) x latency",
    "DDP buckets (25 MiB) overlap the backward pass, at most --overlap (0.8) of it; the last bucket (its share "
    "of the bandwidth time) and all latency terms are always exposed",
    "stragglers: each step waits for the slowest GPU; compute time varies by --jitter (2%), expected max of N "
    "is T x (1 + jitter x sqrt(2 ln N))",
    "a constant --overhead-ms (2 ms) per multi-GPU step (DDP hooks, copies, optimizer sync, launch gaps)",
    "ignored: input pipeline, memory limits, congestion from other jobs; the fabric has full bisection bandwidth",
    "network presets are achievable rates (about 0.9 x line rate for NICs, measured bus bandwidth for NVLink), "
    "latencies are assumed orders of magnitude; see the sources with --list-networks",
    "not yet calibrated from this machine's 'bench comm' / 'bench scaling' results (give --bandwidth/--latency "
    "from a bench comm run by hand)",
)


def add_parser(subparsers: Any) -> None:
    from dlscale.forecast.model import NETWORKS

    intra = ", ".join(n for n, v in NETWORKS.items() if v.scope == "intra")
    inter = ", ".join(n for n, v in NETWORKS.items() if v.scope == "inter")
    p = subparsers.add_parser(
        "predict",
        help="predicted step time, throughput, speedup and efficiency on N GPUs (alpha-beta all-reduce model)",
        description=(
            "Predict how a data-parallel (DDP) training job scales to N GPUs on a cluster this machine cannot "
            "reach: step time, samples/s, speedup and efficiency per GPU count, from the model's parameter "
            "count, the single-GPU speed and the network. Validated against Goyal et al. 2017 (ResNet-50, 256 "
            "P100) and Horovod (Inception V3, ResNet-101, VGG-16 at 128-512 GPUs) within 0.10 of the published "
            "efficiency (tests/test_predict.py)."
        ),
        epilog=(
            "assumptions:\n" + "\n".join(f"  - {a}" for a in ASSUMPTIONS) + "\n\n"
            f"intra-node presets (per-GPU bus bandwidth): {intra}\n"
            f"inter-node presets (per NIC): {inter}\n\n"
            "examples:\n"
            "  dlscale predict --model resnet50 --gpus 1,8,64 --network ib-hdr --single-throughput 1200\n"
            "  dlscale predict --model gpt-small --gpus 8,64,512 --network ib-ndr --intra-network nvlink4 \\\n"
            "      --device 'NVIDIA H100 80GB HBM3' --mfu 0.4 --precision bf16 --batch-size 16 --json\n"
            "  dlscale predict --list-networks"
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
    add("--precision", default="fp32", choices=tuple(GRAD_BYTES), help="training and gradient precision (default fp32: 4-byte gradients)")
    add("--gpus", default="1,8,64", help="comma-separated GPU counts (default 1,8,64)")
    add("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    add("--nics-per-node", type=int, default=1, help="inter-node NICs per node, sharing the traffic (default 1)")
    add("--network", default="ib-hdr", help=f"inter-node preset (default ib-hdr): {inter}")
    add("--intra-network", default="nvlink3", help=f"intra-node preset (default nvlink3, A100 HGX): {intra}")
    add("--bandwidth", type=float, metavar="GB/s", help="inter-node bandwidth per NIC in GB/s (1e9 B/s), overriding --network")
    add("--latency", type=float, metavar="US", help="inter-node latency per ring step in microseconds (with --bandwidth; default the preset's)")
    add("--overlap", type=float, default=None, help="share of the backward pass the all-reduce may hide under (default 0.8)")
    add("--overhead-ms", type=float, default=None, help="constant overhead per multi-GPU step in ms (default 2)")
    add("--jitter", type=float, default=None, help="step-time coefficient of variation for the straggler term (default 0.02)")
    add("--calibrate-comm", metavar="BENCH_COMM", help="a 'dlscale bench comm' result (file or run dir): its measured all-reduce bandwidth and latency become the intra-node link")
    add("--calibrate-scaling", metavar="BENCH_SCALING", help="a 'dlscale bench scaling' result: its one-worker speed (unless --single-throughput) and a per-step overhead fitted to its measured efficiency")
    add("--list-networks", action="store_true", help="print the network presets with their sources and exit")
    add("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(handler=run)


def _gpu_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus takes comma-separated whole numbers like 1,8,64; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--gpus takes GPU counts of at least 1, like 1,8,64; got {text!r}")
    return counts


def model_size(name: str) -> tuple[int, int | None]:
    """(parameters, training FLOPs per sample or None) of a zoo model, built on the meta device."""
    import torch

    from dlscale.models import flops
    from dlscale.models import build_model, model_info

    info = model_info(name)
    with torch.device("meta"):
        model = build_model(name, info.default_input_shape, info.default_num_classes)
    params = sum(p.numel() for p in model.parameters())
    if info.kind == "tokens":
        x = torch.zeros((1, *info.default_input_shape), dtype=torch.long, device="meta")
        y = torch.zeros((1, *info.default_input_shape), dtype=torch.long, device="meta")
    else:
        x = torch.zeros((1, *info.default_input_shape), device="meta")
        y = torch.zeros((1,), dtype=torch.long, device="meta")
    count = flops.count(model, x, y)
    return params, (count.train_per_sample if count else None)


def run(args: argparse.Namespace) -> int:
    from dlscale.forecast import model
    from dlscale.bench.common import result_object
    from dlscale.progress import make_console
    from dlscale.runs.directory import to_json

    console = make_console()
    if args.list_networks:
        _print_networks(console)
        if args.json:
            print(to_json({"networks": [vars(n) for n in model.NETWORKS.values()]}), flush=True)
        return 0

    gpus = _gpu_counts(args.gpus)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.gpus_per_node < 1 or args.nics_per_node < 1:
        raise UserError("--gpus-per-node and --nics-per-node must be at least 1")

    params, train_flops = None, None
    if args.model:
        params, train_flops = model_size(args.model)
    if args.params is not None:
        if args.params < 1:
            raise UserError(f"--params must be at least 1; got {args.params}")
        params = args.params
    if args.flops_per_sample is not None:
        if not args.flops_per_sample > 0:
            raise UserError(f"--flops-per-sample must be above 0; got {args.flops_per_sample}")
        train_flops = args.flops_per_sample
    if params is None:
        raise UserError("give --model NAME (or --params N) so the gradient size is known")

    scaling_rows = model._bench_rows(args.calibrate_scaling, "scaling") if args.calibrate_scaling else None
    if args.single_throughput is not None:
        if not args.single_throughput > 0:
            raise UserError(f"--single-throughput must be above 0 samples/s; got {args.single_throughput}")
        single, speed_source = args.single_throughput, f"measured: {args.single_throughput:g} samples/s (given)"
    elif scaling_rows:
        one = min(scaling_rows, key=lambda r: r["workers"])
        single = one["samples_per_second"] / one["workers"]
        speed_source = f"measured: {single:,.1f} samples/s per worker by bench scaling ({args.calibrate_scaling})"
    elif args.device:
        single, speed_source = _from_datasheet(args, train_flops)
    elif args.model:
        single, speed_source = _measure_here(args.model, args.batch_size, console)
    else:
        raise UserError("give the single-GPU speed: --single-throughput SAMPLES_PER_S (measured, e.g. by "
                        "'dlscale bench train'), or --device NAME --mfu 0.4 for its datasheet peak x an assumed MFU")

    inter = model.network(args.network)
    if model.NETWORKS[args.network].scope != "inter":
        console.print(f"[yellow]note: {args.network} is an intra-node link used here between nodes[/yellow]")
    if args.bandwidth is not None:
        latency = args.latency if args.latency is not None else inter.latency * 1e6
        inter = model.custom_network(args.bandwidth, latency)
    elif args.latency is not None:
        inter = model.custom_network(inter.bandwidth / model.GB, args.latency, name=f"{inter.name}+latency")
    intra = model.network_from_comm(args.calibrate_comm) if args.calibrate_comm else model.network(args.intra_network)

    knobs: dict[str, Any] = {}
    if args.overlap is not None:
        knobs["overlap"] = args.overlap
    if args.overhead_ms is not None:
        if args.overhead_ms < 0:
            raise UserError(f"--overhead-ms must be at least 0; got {args.overhead_ms}")
        knobs["overhead_s"] = args.overhead_ms / 1e3
    if args.jitter is not None:
        if args.jitter < 0:
            raise UserError(f"--jitter must be at least 0; got {args.jitter}")
        knobs["jitter_cv"] = args.jitter

    if scaling_rows and args.overhead_ms is None:
        largest = max(scaling_rows, key=lambda r: r["workers"])
        if largest["workers"] > 1:
            def efficiency_at(overhead: float) -> float:
                return model.predict(
                    params, train_flops, largest["per_worker_batch"], single, [1, largest["workers"]],
                    largest["workers"], intra, inter, grad_bytes_per_param=GRAD_BYTES[args.precision],
                    **{**knobs, "overhead_s": overhead},
                )[-1]["efficiency"]

            knobs["overhead_s"] = model.fit_overhead(largest, efficiency_at)
            console.print(f"calibrated: per-step overhead {knobs['overhead_s'] * 1e3:.3g} ms makes the model match the "
                          f"measured {100 * largest['efficiency']:.1f}% efficiency at {largest['workers']} workers")
    rows = model.predict(
        params, train_flops, args.batch_size, single, gpus, args.gpus_per_node, intra, inter,
        grad_bytes_per_param=GRAD_BYTES[args.precision], nics_per_node=args.nics_per_node, **knobs,
    )
    inputs = {
        "model": args.model, "params": params, "flops_per_sample": train_flops,
        "batch_size": args.batch_size, "precision": args.precision,
        "single_throughput": single, "single_throughput_source": speed_source,
        "gpus_per_node": args.gpus_per_node, "nics_per_node": args.nics_per_node,
        "intra_network": vars(intra), "inter_network": vars(inter),
        "overlap": knobs.get("overlap", model.OVERLAP),
        "overhead_s": knobs.get("overhead_s", model.OVERHEAD_S),
        "jitter_cv": knobs.get("jitter_cv", model.JITTER_CV),
        "bucket_bytes": model.BUCKET_BYTES,
        "calibrated_from": {"comm": args.calibrate_comm, "scaling": args.calibrate_scaling},
    }
    _print_rows(console, rows, inputs)
    if args.json:
        print(to_json(result_object(rows, inputs=inputs, assumptions=list(ASSUMPTIONS))), flush=True)
    return 0


def _measure_here(name: str, batch_size: int, console: Any) -> tuple[float, str]:
    """No speed given: measure one training step rate of the model on this machine's best
    device (the trainer's own step, synthetic batch, a short `bench train`)."""
    from dlscale.bench.train import Setting, Workload, measure
    from dlscale.hardware.device import resolve_device, resolve_precision
    from dlscale.models import model_info

    info = model_info(name)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    console.print(f"no --single-throughput given: measuring {name} at batch {batch_size} on {device} ({precision}) ...")
    workload = Workload(info, info.default_input_shape, info.default_num_classes)
    row = measure(workload, Setting(batch_size, precision, False, device.type == "cuda" and info.conv), device,
                  steps=3, warmup=1, repeats=1)
    speed = row["samples_per_second"]
    return speed, f"measured now on {device} ({precision}, eager, 3 steps): {speed:,.1f} samples/s"


def _from_datasheet(args: argparse.Namespace, train_flops: float | None) -> tuple[float, str]:
    from dlscale.hardware.datasheet import datasheet_peak

    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu must lie in (0, 1]; got {args.mfu}")
    if not train_flops:
        raise UserError("--device needs the training FLOPs per sample: give --model (a zoo model) or --flops-per-sample")
    peak = datasheet_peak(args.device, args.precision)
    if peak is None:
        raise UserError(f"no {args.precision} datasheet peak for device {args.device!r}; give the name as torch "
                        "prints it (see 'dlscale hw'), or a measured --single-throughput")
    flops_per_second, source = peak
    single = flops_per_second * args.mfu / train_flops
    return single, f"datasheet {flops_per_second / 1e12:.1f} TFLOP/s x MFU {args.mfu:g} / {train_flops:.3g} FLOPs per sample ({source})"


def _print_networks(console: Any) -> None:
    from rich.table import Table

    from dlscale.forecast.model import NETWORKS

    table = Table(title="network presets (bandwidth: achievable, one direction)", title_justify="left")
    for column in ("name", "scope", "GB/s", "latency", "source"):
        table.add_column(column, no_wrap=column != "source")
    for n in NETWORKS.values():
        table.add_row(n.name, n.scope, f"{n.bandwidth / 1e9:g}", f"{n.latency * 1e6:g} us", n.source)
    console.print(table)


def _print_rows(console: Any, rows: list[dict[str, Any]], inputs: dict[str, Any]) -> None:
    from rich.table import Table

    title = (f"predicted weak scaling: {inputs['model'] or 'model'} ({inputs['params'] / 1e6:.1f}M params, "
             f"{inputs['precision']} gradients), {inputs['batch_size']}/GPU, "
             f"{inputs['gpus_per_node']} GPUs/node, {inputs['intra_network']['name']} within / "
             f"{inputs['inter_network']['name']} between nodes")
    table = Table(title=title, title_justify="left")
    for column in ("GPUs", "nodes", "step ms", "samples/s", "speedup", "efficiency", "comm ms", "exposed ms"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["gpus"]), str(r["nodes"]), f"{r['step_time_s'] * 1e3:.1f}", f"{r['samples_per_second']:,.0f}",
            f"{r['speedup']:.1f}", f"{r['efficiency']:.1%}", f"{r['comm_s'] * 1e3:.1f}", f"{r['comm_exposed_s'] * 1e3:.1f}",
        )
    console.print(table)
    console.print(f"single GPU: {inputs['single_throughput_source']}")
    console.print("a model, not a measurement: see 'dlscale predict --help' for its assumptions")
    if any(not math.isfinite(r["efficiency"]) for r in rows):  # defensive: never print nan silently
        console.print("[yellow]some predictions are not finite; check the inputs[/yellow]")
