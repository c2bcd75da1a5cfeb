"""The links a gradient all-reduce crosses: presets with their bandwidth, latency and where
each figure comes from, and links the user gives. Bandwidths are bytes/s (one direction),
latencies seconds per ring step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlscale.errors import UserError

GB = 1e9


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
            "(nccl-tests; the NCCL team expects ~230 GB/s at large sizes, github.com/NVIDIA/nccl-tests/issues/149); "
            "220 GB/s used; " + _NCCL_LAT)),
        _net("nvlink4", 370, 5, "intra", (
            "NVLink 4.0 (H100 SXM, 8-GPU HGX): measured ring all-reduce bus bandwidth ~370 GB/s "
            "(nccl-tests, per the NCCL team in github.com/NVIDIA/nccl-tests/issues/212; ~480 GB/s with NVLink SHARP, "
            "not assumed); " + _NCCL_LAT)),
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
            "~46-48 GB/s per NIC (NCCL team, github.com/NVIDIA/nccl-tests/issues/290); 46 GB/s used; " + _NCCL_LAT)),
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
    """A link the user gives in GB/s and microseconds; UserError for impossible figures."""
    if not bandwidth_gbs > 0 or not latency_us >= 0 or not math.isfinite(bandwidth_gbs + latency_us):
        raise UserError(f"--bandwidth must be above 0 GB/s and --latency at least 0 us; got "
                        f"{bandwidth_gbs} GB/s and {latency_us} us")
    return Network(name, bandwidth_gbs * GB, latency_us * 1e-6,
                   f"given: {bandwidth_gbs:g} GB/s, {latency_us:g} us per ring step")
