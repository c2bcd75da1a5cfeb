"""Predicted data-parallel scaling: step time, throughput, speedup and efficiency on N GPUs.

The model (every assumption is listed in ``predict``'s docstring, and ``dlscale forecast
--help`` repeats them): a weak-scaling data-parallel job (fixed per-GPU batch, as Goyal et
al. 2017 and Horovod report) whose gradients are all-reduced once per step by a ring, or
a hierarchical ring across nodes, costed by the alpha-beta model
t = 2(N-1)/N * S/B + 2(N-1) * latency, overlapped DDP-bucket-wise with the backward pass.

The links (bandwidth, latency, sources) live in ``dlscale.forecast.networks``; bandwidths
are bytes/s, latencies seconds.
"""

from __future__ import annotations

import math
from typing import Any

from dlscale.errors import UserError
from dlscale.forecast.networks import Network

GRAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes of one gradient element by training precision

# Defaults of the model's constants (named, not tuned per case; see predict()).
BACKWARD_FRACTION = 2 / 3  # backward ~ 2x forward FLOPs, so 2/3 of the compute time
OVERLAP = 0.8  # share of the backward time that the all-reduce may hide under
BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb=25
OVERHEAD_S = 0.002  # per multi-GPU step: DDP hooks, bucket copies, optimizer sync, launch gaps
JITTER_CV = 0.02  # step-to-step spread of one GPU's compute time (coefficient of variation)

# ``predict``'s assumptions in one line each, as `dlscale forecast --help` and its JSON list them.
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
    "the constants above are one set for every case, checked against the efficiencies Goyal et al. 2017 and "
    "Horovod published, not fitted to this machine; calibrating replaces them: --calibrate-comm puts a "
    "'bench comm' result's all-reduce bandwidth and latency in place of the intra-node preset, "
    "--calibrate-scaling a 'bench scaling' result's one-worker speed (unless --single-throughput) and a "
    "per-step overhead fitted to its measured efficiency (unless --overhead-ms)",
)


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
