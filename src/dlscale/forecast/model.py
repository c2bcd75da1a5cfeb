"""Predicted data-parallel scaling: step time, throughput, speedup and efficiency on N GPUs.

The model (every assumption is listed in ``predict``'s docstring, and ``dlscale forecast
--help`` repeats them): a weak-scaling data-parallel job (fixed per-GPU batch, as Goyal et
al. 2017 and Horovod report) whose gradients are all-reduced once per optimizer step by a
ring, or a hierarchical ring across nodes, costed by the alpha-beta model
t = 2(N-1)/N * S/B + 2(N-1) * latency, bucket by bucket along DDP's timeline so that it
overlaps the backward pass as far as the buckets' readiness allows.

The links (bandwidth, latency, sources) live in ``dlscale.forecast.networks``; bandwidths
are bytes/s, latencies seconds.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from dlscale.errors import UserError
from dlscale.forecast.networks import Network

# Bytes of one gradient element by the parameters' precision. Autocast (AMP) keeps fp32
# parameters, so a mixed-precision DDP run all-reduces 4-byte gradients.
GRAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# Defaults of the model's constants (named, one set for every case, not tuned per case; see predict()).
BACKWARD_FRACTION = 2 / 3  # backward ~ 2x forward FLOPs, so 2/3 of the compute time
OVERLAP = 1.0  # share of the backward pass over which gradients become ready (evenly)
BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb=25
FIRST_BUCKET_BYTES = 2**20  # torch DDP's first bucket (dist._DEFAULT_FIRST_BUCKET_BYTES)
OVERHEAD_S = 0.002  # per multi-GPU step: DDP hooks, bucket copies, optimizer sync, launch gaps
JITTER_CV = 0.02  # step-to-step spread of one GPU's compute time (coefficient of variation)

# ``predict``'s assumptions in one line each, as `dlscale forecast --help` and its JSON list them.
ASSUMPTIONS = (
    "weak scaling: a fixed per-GPU batch (--batch-size), so the global batch grows with N; "
    "speedup = N x t(1) / t(N), efficiency = speedup / N",
    "compute per micro-step T = batch / single-GPU throughput, equal on every GPU; backward = 2/3 of T",
    "gradients of params x 4 bytes (--grad-precision fp32, also under AMP: autocast keeps fp32 parameters) or 2 "
    "(bf16/fp16 parameters) are all-reduced once per optimizer step (after --grad-accum micro-steps); nothing else moves",
    "one node: ring all-reduce over the intra-node link, 2(N-1)/N x S/B + 2(N-1) x latency (alpha-beta, B = bus bandwidth)",
    "several nodes (hierarchical): the intra-node share 2(g-1)/g x S/B_intra and the inter-node share 2(n-1)/n x S/(nics x B_node) "
    "of g concurrent rings that share the node's NICs; NCCL pipelines chunks through every hop, so the slower "
    "share bounds the transfer (the larger of the two), plus 2(g-1) intra and 2(n-1) inter latencies",
    "DDP's timeline: a 1 MiB first bucket, then 25 MiB buckets, filled as gradients become ready evenly over the "
    "last --overlap (1.0) of the last micro-step's backward pass, all-reduced one after another as each fills; "
    "what runs past the backward pass, and the latency terms, are exposed",
    "stragglers: GPUs wait for the slowest once per optimizer step; compute varies by --jitter (2%) per micro-step, "
    "the expected max of N is K T x (1 + jitter / sqrt(K) x sqrt(2 ln N)) for K accumulated micro-steps",
    "a constant --overhead-ms (2 ms) per multi-GPU step (DDP hooks, copies, optimizer sync, launch gaps)",
    "input: with --input-rate (samples/s one node's loaders deliver, as 'dlscale bench data' measures) a step lasts "
    "at least as long as the node's loaders need; without it the input pipeline never makes a GPU wait",
    "ignored: memory limits, congestion from other jobs; the fabric has full bisection bandwidth",
    "network presets are achievable rates (about 0.9 x line rate for NICs, measured bus bandwidth for NVLink), "
    "latencies are assumed orders of magnitude; see the sources with --list-networks",
    "the constants above are one set for every case, checked against published efficiencies (Goyal et al. 2017, "
    "Horovod, NVIDIA's DeepLearningExamples on DGX A100 and V100: tests/forecast/test_forecast.py), not fitted "
    "to this machine; calibrating replaces them: --calibrate-comm puts a 'bench comm' result's all-reduce "
    "bandwidth and latency in place of the intra-node preset, --calibrate-scaling a 'bench scaling' result's "
    "one-worker speed (unless --single-throughput) and a per-step overhead fitted to its measured efficiency "
    "(unless --overhead-ms)",
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


def bucket_sizes(grad_bytes: float, bucket_bytes: float = BUCKET_BYTES,
                 first_bucket_bytes: float = FIRST_BUCKET_BYTES) -> list[float]:
    """The sizes of DDP's gradient buckets in the order they are all-reduced: a small first
    bucket (torch's 1 MiB, so communication starts early), then ``bucket_bytes`` each."""
    sizes = [min(first_bucket_bytes, grad_bytes)]
    left = grad_bytes - sizes[0]
    while left > 0:
        sizes.append(min(bucket_bytes, left))
        left -= sizes[-1]
    return sizes


def exposed_communication(buckets: list[float], backward: float, overlap: float, bandwidth_time: Callable[[float], float],
                          latency: float) -> tuple[float, float]:
    """(all-reduce time in all, the part of it after the backward pass ends), seconds.

    DDP's timeline: gradients become ready at an even rate over the last ``overlap`` share of
    the backward pass (the share in which gradient hooks fire); a bucket is all-reduced once
    it is full and the previous bucket's transfer is done (one communication stream), taking
    ``bandwidth_time(size)``. The collectives' latency terms (``latency``) are paid once, at
    the end: queued buckets pipeline their ring steps behind each other's transfers."""
    total = sum(buckets)
    start_of_ready = backward * (1 - overlap)
    ready, clock, comm = 0.0, 0.0, 0.0
    for size in buckets:
        ready += size
        cost = bandwidth_time(size)
        clock = max(clock, start_of_ready + overlap * backward * ready / total) + cost
        comm += cost
    return comm + latency, max(0.0, clock + latency - backward)


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
    grad_accum: int = 1,
    input_rate: float | None = None,
) -> list[dict[str, Any]]:
    """One row per GPU count: predicted step time, throughput, speedup and efficiency.

    Assumptions (all of them; the CLI's --help repeats them):

    1. Data parallel, weak scaling: every GPU keeps ``per_gpu_batch``, so the global batch
       grows with N. speedup(N) = N * t(1) / t(N), efficiency = speedup / N.
    2. Compute: T = per_gpu_batch / single_throughput per micro-step, the same on every GPU;
       the backward pass is BACKWARD_FRACTION (2/3) of T (backward ~ 2x forward FLOPs).
       ``flops_per_sample`` is only reported (achieved FLOP/s per GPU), not used in timing.
    3. Gradients: S = params x grad_bytes_per_param bytes, all-reduced once per optimizer
       step. Under autocast (AMP) the parameters stay fp32, so DDP all-reduces 4-byte
       gradients; 2 bytes only when the parameters themselves are bf16/fp16. With
       ``grad_accum`` K, the first K-1 micro-steps skip the all-reduce (DDP's no_sync).
    4. One node (N <= gpus_per_node): a ring over the intra-node link,
       t = 2(N-1)/N * S/B_intra + 2(N-1) * latency_intra (alpha-beta; B is the bus bandwidth).
    5. Several nodes (N a multiple of gpus_per_node = g, n = N/g nodes): the intra-node share
       (reduce-scatter and all-gather, (g-1)/g * S/B_intra each) and the inter-node share,
       g concurrent rings of S/g bytes each that share the node's link (nics_per_node NICs of
       B_inter): 2(n-1)/n * S/(nics x B_inter). NCCL pipelines chunks through every hop, so
       the transfer takes the larger of the two shares, not their sum; the latency terms
       2(g-1) latency_intra + 2(n-1) latency_inter add. Inter-node presets give one NIC's
       achievable rate (line rate x ~0.9), not the line rate.
    6. DDP's buckets: a 1 MiB first bucket, then ``bucket_bytes`` (25 MiB) each, each one
       all-reduce paying the latency terms again (so small messages run below the link's
       bandwidth). Gradients become ready at an even rate over the last ``overlap`` share
       of the last micro-step's backward pass; a bucket goes once full and once the one
       before it is done; what is still running when the backward pass ends is exposed
       (``exposed_communication``).
    7. Stragglers: GPUs wait for each other once per optimizer step; one GPU's compute time
       for K micro-steps varies by jitter_cv / sqrt(K), and the expected maximum of N such
       times is K T x (1 + jitter_cv / sqrt(K) x sqrt(2 ln N)) (Gaussian extreme value).
    8. A constant overhead_s (2 ms) per multi-GPU optimizer step: DDP hooks, bucket copies,
       optimizer synchronisation and launch gaps that real systems show.
    9. Input: with ``input_rate`` (samples/s one node's data loaders deliver, e.g. measured
       by `dlscale bench data`), a step takes at least the time the node's loaders need for
       its GPUs' samples; without it the input pipeline is assumed never to wait.
    10. Memory limits and network congestion from other jobs are ignored; the network is a
        full-bisection fabric.
    """
    if params <= 0 or per_gpu_batch <= 0 or not single_throughput > 0:
        raise UserError("the parameter count, the per-GPU batch and the single-GPU throughput must be above 0")
    if gpus_per_node < 1:
        raise UserError(f"--gpus-per-node must be at least 1; got {gpus_per_node}")
    if not 0 <= overlap <= 1:
        raise UserError(f"the overlap fraction must lie in [0, 1]; got {overlap}")
    if grad_accum < 1:
        raise UserError(f"--grad-accum must be at least 1; got {grad_accum}")
    if input_rate is not None and not input_rate > 0:
        raise UserError(f"--input-rate must be above 0 samples/s; got {input_rate}")
    for gpus in gpus_list:
        if gpus < 1:
            raise UserError(f"GPU counts must be at least 1; got {gpus}")
        if gpus > gpus_per_node and gpus % gpus_per_node:
            raise UserError(f"{gpus} GPUs do not fill whole nodes of {gpus_per_node}; give a multiple of "
                            "--gpus-per-node (or fewer GPUs than one node)")

    micro = per_gpu_batch / single_throughput
    compute = grad_accum * micro
    backward = BACKWARD_FRACTION * micro  # the last micro-step's, which the all-reduce overlaps
    grad_bytes = params * grad_bytes_per_param
    buckets = bucket_sizes(grad_bytes, bucket_bytes)

    def step(gpus: int) -> dict[str, Any]:
        def bandwidth_time(size: float) -> float:
            intra_s, _, inter_s, _ = allreduce_parts(size, gpus, gpus_per_node, intra, inter, nics_per_node)
            return max(intra_s, inter_s)

        intra_bw, intra_lat, inter_bw, inter_lat = allreduce_parts(
            grad_bytes, gpus, gpus_per_node, intra, inter, nics_per_node)
        if gpus > 1:
            comm, exposed = exposed_communication(buckets, backward, overlap, bandwidth_time, intra_lat + inter_lat)
        else:
            comm, exposed = 0.0, 0.0
        synced = compute * (1 + jitter_cv / math.sqrt(grad_accum) * math.sqrt(2 * math.log(gpus)))
        overhead = overhead_s if gpus > 1 else 0.0
        total = synced + exposed + overhead
        input_s = min(gpus, gpus_per_node) * grad_accum * per_gpu_batch / input_rate if input_rate else 0.0
        return {
            "gpus": gpus,
            "nodes": max(1, math.ceil(gpus / gpus_per_node)),
            "step_time_s": max(total, input_s),
            "compute_s": compute,
            "straggler_s": synced - compute,
            "comm_s": comm,
            "comm_intra_s": intra_bw + intra_lat,
            "comm_inter_s": inter_bw + inter_lat,
            "comm_exposed_s": exposed,
            "overhead_s": overhead,
            "input_bound": input_s > total,
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
            "samples_per_second": gpus * grad_accum * per_gpu_batch / t,
            "speedup": speedup,
            "efficiency": speedup / gpus,
            "comm_s": row["comm_s"],
            "comm_exposed_s": row["comm_exposed_s"],
            "global_batch_size": gpus * grad_accum * per_gpu_batch,
            "compute_s": row["compute_s"],
            "straggler_s": row["straggler_s"],
            "comm_intra_s": row["comm_intra_s"],
            "comm_inter_s": row["comm_inter_s"],
            "overhead_s": row["overhead_s"],
            "input_bound": row["input_bound"],
            "achieved_flops_per_second_per_gpu": (
                flops_per_sample * grad_accum * per_gpu_batch / t if flops_per_sample else None),
        })
    return rows
