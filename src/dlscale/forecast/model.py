"""Predicted data-parallel scaling: step time, throughput, speedup and efficiency on N GPUs.

The model (every assumption is listed in ``predict``'s docstring, and ``dlscale predict
--help`` repeats them): a weak-scaling data-parallel job (fixed per-GPU batch, as Goyal et
al. 2017 and Horovod report) whose gradients are all-reduced once per step by a ring, or
a hierarchical ring across nodes, costed by the alpha-beta model
t = 2(N-1)/N * S/B + 2(N-1) * latency, overlapped DDP-bucket-wise with the backward pass.

``NETWORKS`` holds the link presets with their bandwidth, latency and where the figures
come from. Bandwidths are bytes/s, latencies seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dlscale.errors import UserError

GB = 1e9

# Defaults of the model's constants (named, not tuned per case; see predict()).
BACKWARD_FRACTION = 2 / 3  # backward ~ 2x forward FLOPs, so 2/3 of the compute time
OVERLAP = 0.8  # share of the backward time that the all-reduce may hide under
BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb=25
OVERHEAD_S = 0.002  # per multi-GPU step: DDP hooks, bucket copies, optimizer sync, launch gaps
JITTER_CV = 0.02  # step-to-step spread of one GPU's compute time (coefficient of variation)


@dataclass(frozen=True)
class Network:
    """One link: the bandwidth a collective achieves on it (bytes/s, one direction) and the
    latency of one ring step (s). Intra-node presets give the per-GPU all-reduce bus
    bandwidth; inter-node presets the rate of one node's link (NIC)."""

    name: str
    bandwidth: float
    latency: float
    source: str
    scope: str = "inter"  # "intra": within a node (per GPU); "inter": between nodes (per NIC)


def _net(name: str, bandwidth_gbs: float, latency_us: float, scope: str, source: str) -> Network:
    return Network(name, bandwidth_gbs * GB, latency_us * 1e-6, source, scope)


_NCCL_LAT = "latency: order of an NCCL ring step (protocol + proxy), an assumption, not a measurement"
_TCP_LAT = "latency: order of a TCP/RoCE message round through the kernel/NIC for one ring step, an assumption"

NETWORKS: dict[str, Network] = {
    n.name: n
    for n in (
        _net("nvlink1", 65, 5, "intra", (
            "NVLink 1.0 (P100 SXM2, DGX-1 / Big Basin): 4 links x 20 GB/s = 80 GB/s per GPU per direction; "
            "~65 GB/s all-reduce bus bandwidth assumed (derived, ~80% of the link sum); " + _NCCL_LAT)),
        _net("nvlink2", 130, 5, "intra", (
            "NVLink 2.0 (V100 SXM2, DGX-1V): 6 links x 25 GB/s = 150 GB/s per GPU per direction; "
            "~130 GB/s all-reduce bus bandwidth over 8 GPUs is assumed (derived, ~87% of the link sum); " + _NCCL_LAT)),
        _net("nvlink3", 220, 5, "intra", (
            "NVLink 3.0 (A100 SXM, 8-GPU HGX): measured all-reduce bus bandwidth ~200-230 GB/s "
            "(nccl-tests, ANCHORS.md); 220 GB/s used; " + _NCCL_LAT)),
        _net("nvlink4", 370, 5, "intra", (
            "NVLink 4.0 (H100 SXM, 8-GPU HGX): measured ring all-reduce bus bandwidth ~370 GB/s "
            "(nccl-tests, ANCHORS.md; ~480 GB/s with NVLink SHARP, not assumed); " + _NCCL_LAT)),
        _net("pcie3", 10, 10, "intra", (
            "PCIe 3.0 x16: 15.75 GB/s line rate per direction, ~12 GB/s achievable host-device; "
            "~10 GB/s all-reduce bus bandwidth through a PCIe switch assumed (derived); " + _NCCL_LAT)),
        _net("pcie4", 20, 10, "intra", (
            "PCIe 4.0 x16: 31.5 GB/s line rate per direction, ~24 GB/s achievable; "
            "~20 GB/s all-reduce bus bandwidth assumed (derived); " + _NCCL_LAT)),
        _net("pcie5", 40, 10, "intra", (
            "PCIe 5.0 x16: 63 GB/s line rate per direction, ~50 GB/s achievable; "
            "~40 GB/s all-reduce bus bandwidth assumed (derived); " + _NCCL_LAT)),
        _net("ib-fdr", 6.0, 5, "inter", (
            "InfiniBand FDR 4x 56 Gb/s = 7 GB/s signalling, 6.8 GB/s data rate (64b/66b), "
            "~6.0 GB/s achievable per NIC (derived, ~88%); " + _NCCL_LAT)),
        _net("ib-edr", 11.5, 5, "inter", (
            "InfiniBand EDR 100 Gb/s = 12.5 GB/s line rate, ~11.5 GB/s achievable per NIC "
            "(derived, ~92%); " + _NCCL_LAT)),
        _net("ib-hdr", 23, 5, "inter", (
            "InfiniBand HDR 200 Gb/s = 25 GB/s line rate, ~23 GB/s achievable per NIC "
            "(derived, ~92%); " + _NCCL_LAT)),
        _net("ib-ndr", 46, 5, "inter", (
            "InfiniBand NDR 400 Gb/s = 50 GB/s line rate; measured all-reduce bus bandwidth "
            "~46-48 GB/s per NIC (ANCHORS.md); 46 GB/s used; " + _NCCL_LAT)),
        _net("eth-10g", 1.1, 30, "inter", (
            "10 Gbit/s Ethernet = 1.25 GB/s line rate, ~1.1 GB/s achievable with TCP (derived, ~88%); " + _TCP_LAT)),
        _net("eth-25g", 2.8, 25, "inter", (
            "25 Gbit/s Ethernet (the Horovod benchmark's RoCE-capable links) = 3.125 GB/s line rate, "
            "~2.8 GB/s achievable (derived, ~90%); " + _TCP_LAT)),
        _net("eth-50g", 5.6, 25, "inter", (
            "50 Gbit/s Ethernet (Goyal et al. 2017's servers) = 6.25 GB/s line rate, "
            "~5.6 GB/s achievable (derived, ~90%); " + _TCP_LAT)),
        _net("eth-100g", 11, 20, "inter", (
            "100 Gbit/s Ethernet = 12.5 GB/s line rate, ~11 GB/s achievable with RoCE or several "
            "TCP streams (derived, ~88%); " + _TCP_LAT)),
    )
}


def network(name: str) -> Network:
    """The preset called ``name``; UserError naming the presets otherwise."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise UserError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)} "
                        "(or give --bandwidth GB/s and --latency us)") from None


def custom_network(bandwidth_gbs: float, latency_us: float, name: str = "custom") -> Network:
    if not bandwidth_gbs > 0 or not latency_us >= 0 or not math.isfinite(bandwidth_gbs + latency_us):
        raise UserError(f"--bandwidth must be above 0 GB/s and --latency at least 0 us; got "
                        f"{bandwidth_gbs} GB/s and {latency_us} us")
    return Network(name, bandwidth_gbs * GB, latency_us * 1e-6,
                   f"given: {bandwidth_gbs:g} GB/s, {latency_us:g} us per ring step")


def ring_allreduce_time(nbytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    """Alpha-beta cost of a ring all-reduce of ``nbytes`` over ``ranks`` at bus bandwidth
    ``bandwidth``: 2(N-1)/N * S/B + 2(N-1) * latency (0 for one rank)."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def allreduce_parts(nbytes: float, gpus: int, gpus_per_node: int, intra: Network, inter: Network,
                    nics_per_node: int = 1) -> tuple[float, float, float, float]:
    """(intra bandwidth term, intra latency term, inter bandwidth term, inter latency term), seconds,
    of one all-reduce of ``nbytes`` gradients over ``gpus`` GPUs (see ``predict``)."""
    if gpus <= gpus_per_node:  # one node: a flat ring over the intra-node link
        g = gpus
        if g <= 1:
            return 0.0, 0.0, 0.0, 0.0
        return 2 * (g - 1) / g * nbytes / intra.bandwidth, 2 * (g - 1) * intra.latency, 0.0, 0.0
    g, n = gpus_per_node, gpus // gpus_per_node
    # intra reduce-scatter + intra all-gather: (g-1)/g * S / B_intra each
    intra_bw = 2 * (g - 1) / g * nbytes / intra.bandwidth
    intra_lat = 2 * (g - 1) * intra.latency
    # g concurrent inter-node rings, each of S/g bytes, sharing the node's links:
    # 2(n-1)/n * (S/g) / (B_node/g) = 2(n-1)/n * S / B_node
    inter_bw = 2 * (n - 1) / n * nbytes / (inter.bandwidth * nics_per_node)
    inter_lat = 2 * (n - 1) * inter.latency
    return intra_bw, intra_lat, inter_bw, inter_lat


def predict(
    params: int,
    flops_per_sample: float | None,
    per_gpu_batch: int,
    single_throughput: float,
    gpus_list: list[int],
    gpus_per_node: int,
    intra: Network,
    inter: Network,
    grad_bytes_per_param: int = 4,
    overlap: float = OVERLAP,
    overhead_s: float = OVERHEAD_S,
    bucket_bytes: float = BUCKET_BYTES,
    jitter_cv: float = JITTER_CV,
    nics_per_node: int = 1,
) -> list[dict[str, Any]]:
    """One row per GPU count: predicted step time, throughput, speedup and efficiency.

    Assumptions (all of them; the CLI's --help repeats them):

    1. Data parallel, weak scaling: every GPU keeps ``per_gpu_batch``, so the global batch
       grows with N. speedup(N) = N * t(1) / t(N), efficiency = speedup / N.
    2. Compute: T = per_gpu_batch / single_throughput, the same on every GPU; the backward
       pass is BACKWARD_FRACTION (2/3) of T (backward ~ 2x forward FLOPs).
       ``flops_per_sample`` is only reported (achieved FLOP/s per GPU), not used in timing.
    3. Gradients: S = params x grad_bytes_per_param bytes (4 fp32, 2 bf16/fp16), all-reduced
       once per step; nothing else crosses the network (no parameter server, no sharding).
    4. One node (N <= gpus_per_node): a ring over the intra-node link,
       t = 2(N-1)/N * S/B_intra + 2(N-1) * latency_intra (alpha-beta; B is the bus bandwidth).
    5. Several nodes (N a multiple of gpus_per_node = g, n = N/g nodes): hierarchical —
       intra-node reduce-scatter and all-gather ((g-1)/g * S/B_intra each), and between
       them g concurrent inter-node rings of S/g bytes each that share the node's link
       (nics_per_node NICs of B_inter): 2(n-1)/n * S/(nics x B_inter) + 2(n-1) * latency_inter.
       Inter-node presets give one NIC's achievable rate (line rate x ~0.9), not the line rate.
    6. Overlap (DDP buckets of bucket_bytes, default 25 MiB): the all-reduce runs bucket
       by bucket during the backward pass and may hide under at most ``overlap`` (0.8) of
       it (contention and gaps between buckets take the rest). The last bucket becomes
       ready only when the backward pass ends, so its share min(1, bucket/S) of the
       bandwidth time plus all latency terms is always exposed:
       exposed = max(tail, comm - overlap x backward).
    7. Stragglers: every step waits for the slowest of N GPUs; a GPU's compute time
       varies by jitter_cv (2%) step to step, and the expected maximum of N such times
       is T x (1 + jitter_cv x sqrt(2 ln N)) (Gaussian extreme-value approximation).
    8. A constant overhead_s (2 ms) per multi-GPU step: DDP hooks, bucket copies,
       optimizer synchronisation and launch gaps that real systems show.
    9. Input pipeline, memory limits, the optimizer's own time beyond T, and network
       congestion from other jobs are ignored; the network is a full-bisection fabric.
    """
    if params <= 0 or per_gpu_batch <= 0 or not single_throughput > 0:
        raise UserError("the parameter count, the per-GPU batch and the single-GPU throughput must be above 0")
    if gpus_per_node < 1:
        raise UserError(f"--gpus-per-node must be at least 1; got {gpus_per_node}")
    if not 0 <= overlap <= 1:
        raise UserError(f"the overlap fraction must lie in [0, 1]; got {overlap}")
    for gpus in gpus_list:
        if gpus < 1:
            raise UserError(f"GPU counts must be at least 1; got {gpus}")
        if gpus > gpus_per_node and gpus % gpus_per_node:
            raise UserError(f"{gpus} GPUs do not fill whole nodes of {gpus_per_node}; give a multiple of "
                            "--gpus-per-node (or fewer GPUs than one node)")

    compute = per_gpu_batch / single_throughput
    backward = BACKWARD_FRACTION * compute
    grad_bytes = params * grad_bytes_per_param
    tail_share = min(1.0, bucket_bytes / grad_bytes)

    def step(gpus: int) -> dict[str, Any]:
        intra_bw, intra_lat, inter_bw, inter_lat = allreduce_parts(
            grad_bytes, gpus, gpus_per_node, intra, inter, nics_per_node)
        comm = intra_bw + intra_lat + inter_bw + inter_lat
        tail = tail_share * (intra_bw + inter_bw) + intra_lat + inter_lat
        exposed = max(tail, comm - overlap * backward) if gpus > 1 else 0.0
        synced = compute * (1 + jitter_cv * math.sqrt(2 * math.log(gpus)))
        overhead = overhead_s if gpus > 1 else 0.0
        return {
            "gpus": gpus,
            "nodes": max(1, math.ceil(gpus / gpus_per_node)),
            "step_time_s": synced + exposed + overhead,
            "compute_s": compute,
            "straggler_s": synced - compute,
            "comm_s": comm,
            "comm_intra_s": intra_bw + intra_lat,
            "comm_inter_s": inter_bw + inter_lat,
            "comm_exposed_s": exposed,
            "overhead_s": overhead,
        }

    base = step(1)["step_time_s"]
    rows = []
    for gpus in gpus_list:
        row = step(gpus)
        t = row["step_time_s"]
        speedup = gpus * base / t
        rows.append({
            "gpus": row["gpus"],
            "nodes": row["nodes"],
            "step_time_s": t,
            "samples_per_second": gpus * per_gpu_batch / t,
            "speedup": speedup,
            "efficiency": speedup / gpus,
            "comm_s": row["comm_s"],
            "comm_exposed_s": row["comm_exposed_s"],
            "global_batch_size": gpus * per_gpu_batch,
            "compute_s": row["compute_s"],
            "straggler_s": row["straggler_s"],
            "comm_intra_s": row["comm_intra_s"],
            "comm_inter_s": row["comm_inter_s"],
            "overhead_s": row["overhead_s"],
            "achieved_flops_per_second_per_gpu": (
                flops_per_sample * per_gpu_batch / t if flops_per_sample else None),
        })
    return rows


# --------------------------------------------------------------------------- calibration


def _bench_rows(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """The rows of a `dlscale bench KIND` result: its JSON file, or the run directory holding it."""
    import json

    path = Path(path)
    if path.is_dir():
        path = path / f"bench-{kind}.json"
    try:
        result = json.loads(path.read_text())
        rows = result["results"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a 'dlscale bench {kind}' result (bench-{kind}.json)") from None
    if result.get("kind") not in (None, kind) or not rows:
        raise UserError(f"{path} is not a 'dlscale bench {kind}' result with rows")
    return rows


def network_from_comm(path: str | Path) -> Network:
    """This machine's link, as `bench comm` measured it: the all-reduce bus bandwidth at the
    largest size, and the per-step latency from the smallest size (t = 2(N-1) latencies)."""

    rows = [r for r in _bench_rows(path, "comm") if r.get("op") == "all_reduce" and r.get("time_s")]
    if not rows or rows[0]["world_size"] < 2:
        raise UserError(f"{path} has no all_reduce rows over 2 or more ranks to calibrate from")
    largest = max(rows, key=lambda r: r["bytes"])
    smallest = min(rows, key=lambda r: r["bytes"])
    latency = smallest["time_s"] / (2 * (smallest["world_size"] - 1))
    return Network(
        name="measured", bandwidth=largest["busbw_gbps"] * GB, latency=latency, scope="intra",
        source=f"calibrated from {path}: all_reduce busbw {largest['busbw_gbps']:.3g} GB/s at "
               f"{largest['bytes']} bytes, latency {latency * 1e6:.3g} us from {smallest['bytes']} bytes",
    )


def fit_overhead(measured: dict[str, Any], predict_at: Callable[[float], float]) -> float:
    """The per-step overhead (s) that makes the model's efficiency at the measured worker count
    equal the measured one (bisection; 0 when the model is already no better than measured)."""
    target = measured["efficiency"]
    low, high = 0.0, 10.0
    if predict_at(low) <= target:
        return 0.0
    for _ in range(60):
        middle = (low + high) / 2
        if predict_at(middle) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2
