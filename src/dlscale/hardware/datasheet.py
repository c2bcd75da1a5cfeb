"""Dense peak FLOP/s of known accelerators, by device and precision: data, not code.

Every figure is the vendor's *dense* number for one device (one GPU, not a board of
two), with the document it comes from. Datasheets since Ampere print tensor-core
figures "with sparsity" (2:4 structured sparsity) as the headline: the dense figure a
training step can reach is half of it. Taking the headline doubles the peak and halves
the MFU, a known mistake in peers' reports; each source string below says whether the
figure was printed dense or halved from the sparse headline.

A chip that is not here, or a precision a chip does not have (bf16 on V100 and T4),
gives ``None``: MFU is then null, never computed against a guessed peak. Ambiguous
names give ``None`` too: a bare "NVIDIA H100" (SXM or PCIe?), a MIG slice
("... MIG 1g.5gb", a fraction of the chip), and the NVL boards, whose per-GPU figures
we could not pin down from the vendor's documents. CPUs are never in this table:
their peak is the measured large-GEMM rate (``dlscale.hardware.peaks.measured_peaks``).

Names are matched as ``torch.cuda.get_device_name()`` prints them, e.g.
"NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB",
"NVIDIA A100 80GB PCIe", "NVIDIA H200", "Tesla V100-SXM2-16GB", "NVIDIA L4",
"NVIDIA L40S", "NVIDIA A10", "Tesla T4", "AMD Instinct MI300X".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")

T = 1e12  # one teraFLOP/s


@dataclass(frozen=True)
class Part:
    """One accelerator model: how torch names it, its dense peaks, and where they come from."""

    part: str                   # the product, as the vendor names it
    names: tuple[str, ...]      # regular expressions, matched in full against the upper-cased device name
    dense: dict[str, float]     # precision -> dense FLOP/s of one device
    source: str                 # the vendor document and how the figures were read from it
    multiprocessors: int | None = None  # SMs (NVIDIA) or CUs (AMD) of the full chip; fewer visible means a slice
    notes: dict[str, str] = field(default_factory=dict)  # precision -> a remark on that figure


_V100_SOURCE = "NVIDIA V100 Tensor Core GPU datasheet (dense; Volta has no sparsity)"
_A100_SOURCE = (
    "NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS dense "
    "(312/624 are the with-sparsity figures)"
)
_H100_SXM_SOURCE = (
    "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 SXM5 dense figures "
    "(the H100 datasheet's 989 TF32 / 1,979 BF16 / 3,958 FP8 TFLOPS assume 2:4 sparsity: dense is half)"
)

PARTS: tuple[Part, ...] = (
    Part(
        part="NVIDIA V100 SXM2",
        names=(r".*\bV100-SXM[23]-(16|32)GB",),
        dense={"fp32": 15.7 * T, "fp16": 125 * T},
        source=_V100_SOURCE + ": V100 SXM2 FP32 15.7, Tensor (FP16) 125 TFLOPS",
        multiprocessors=80,
        notes={"fp16": "tensor cores, FP16 inputs with FP32 accumulate"},
    ),
    Part(
        part="NVIDIA V100 PCIe",
        names=(r".*\bV100-PCIE-(16|32)GB",),
        dense={"fp32": 14 * T, "fp16": 112 * T},
        source=_V100_SOURCE + ": V100 PCIe FP32 14, Tensor (FP16) 112 TFLOPS",
        multiprocessors=80,
    ),
    Part(
        part="NVIDIA V100S PCIe",
        names=(r".*\bV100S-PCIE-32GB",),
        dense={"fp32": 16.4 * T, "fp16": 130 * T},
        source=_V100_SOURCE + ": V100S PCIe FP32 16.4, Tensor (FP16) 130 TFLOPS",
        multiprocessors=80,
    ),
    Part(
        part="NVIDIA A100 SXM4",
        names=(r".*\bA100-SXM4?-(40|80)GB",),
        dense={"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
        source=_A100_SOURCE + "; A100 SXM",
        multiprocessors=108,
    ),
    Part(
        part="NVIDIA A100 PCIe",
        names=(r".*\bA100-PCIE-(40|80)GB", r".*\bA100 (40|80)GB PCIE"),
        dense={"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
        source=_A100_SOURCE + "; A100 PCIe: the same peaks as SXM (the PCIe board sustains lower clocks at 250-300 W)",
        multiprocessors=108,
    ),
    Part(
        part="NVIDIA H100 SXM5",
        # SXM5 boards print as "NVIDIA H100 80GB HBM3"; PCIe ones as "NVIDIA H100 PCIe" (HBM2e).
        names=(r".*\bH100 80GB HBM3", r".*\bH100 SXM5?( 80GB)?"),
        dense={"fp32": 66.9 * T, "tf32": 494.7 * T, "bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T},
        source=_H100_SXM_SOURCE,
        multiprocessors=132,
    ),
    Part(
        part="NVIDIA H100 PCIe",
        names=(r".*\bH100 PCIE",),
        dense={"fp32": 51.2 * T, "tf32": 378 * T, "bf16": 756 * T, "fp16": 756 * T, "fp8": 1513 * T},
        source=(
            "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 PCIe dense figures "
            "(the datasheet's 756 TF32 / 1,513 BF16 / 3,026 FP8 TFLOPS assume 2:4 sparsity: dense is half)"
        ),
        multiprocessors=114,
    ),
    Part(
        part="NVIDIA H200 SXM",
        names=(r"NVIDIA H200", r".*\bH200 SXM5?( 141GB)?"),
        dense={"fp32": 66.9 * T, "tf32": 494.7 * T, "bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T},
        source=(
            "NVIDIA H200 datasheet, H200 SXM: the same figures as H100 SXM (67 FP32, 989 TF32, 1,979 BF16/FP16, "
            "3,958 FP8 TFLOPS with 2:4 sparsity; the same GH100 compute, more and faster memory); dense values "
            "from the H100 Architecture whitepaper"
        ),
        multiprocessors=132,
    ),
    Part(
        part="NVIDIA L4",
        names=(r".*\bL4",),
        dense={"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T, "fp8": 242.5 * T},
        source=(
            "NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3 TFLOPS; TF32 120, BF16/FP16 242, FP8 485 TFLOPS "
            "with sparsity, halved to dense"
        ),
        multiprocessors=58,
    ),
    Part(
        part="NVIDIA L40S",
        names=(r".*\bL40S",),
        dense={"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T, "fp8": 733 * T},
        source=(
            "NVIDIA L40S datasheet, dense column: FP32 91.6, TF32 183, BF16/FP16 362.05, FP8 733 TFLOPS "
            "(366 / 733 / 1,466 with sparsity)"
        ),
        multiprocessors=142,
    ),
    Part(
        part="NVIDIA A10",
        names=(r".*\bA10",),  # not A100 (full match) and not A10G, a different part
        dense={"fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T},
        source=(
            "NVIDIA A10 Tensor Core GPU datasheet, dense column: FP32 31.2, TF32 62.5, BF16/FP16 125 TFLOPS "
            "(125 / 250 with sparsity)"
        ),
        multiprocessors=72,
    ),
    Part(
        part="NVIDIA T4",
        names=(r".*\bT4",),
        dense={"fp32": 8.1 * T, "fp16": 65 * T},
        source="NVIDIA T4 Tensor Core GPU datasheet: FP32 8.1, mixed precision (FP16/FP32) 65 TFLOPS (Turing: dense only)",
        multiprocessors=40,
        notes={"fp16": "tensor cores, FP16 inputs with FP32 accumulate"},
    ),
    Part(
        part="AMD Instinct MI300X",
        names=(r"AMD INSTINCT MI300X( VF)?",),
        # TF32 (653.7 dense) left out on purpose: PyTorch on ROCm runs fp32 matmuls on the
        # FP32 matrix path unless XF32 is switched on by hand, so fp32 is the peak to use.
        dense={"fp32": 163.4 * T, "bf16": 1307.4 * T, "fp16": 1307.4 * T, "fp8": 2614.9 * T},
        source=(
            "AMD Instinct MI300X data sheet, dense: FP32 matrix 163.4, BF16/FP16 1,307.4, FP8 2,614.9 TFLOPS "
            "(2,614.9 / 5,229.8 with sparsity)"
        ),
        multiprocessors=304,  # CUs in SPX mode; a CPX partition shows a fraction of them
    ),
)


def _normalize(device_name: str) -> str:
    return " ".join(device_name.upper().split())


def find_part(device_name: str) -> Part | None:
    """The table entry for a device name as torch prints it, or None when unknown or ambiguous."""
    name = _normalize(device_name)
    if not name or re.search(r"\bMIG\b", name):
        return None  # a MIG slice has a fraction of the chip's SMs: the full-chip peak would be wrong
    for part in PARTS:
        if any(re.fullmatch(pattern, name) for pattern in part.names):
            return part
    return None


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def datasheet_peak(device_name: str, precision: str) -> tuple[float, str] | None:
    """Dense peak FLOP/s of one device at ``precision`` and a line saying which part and
    source, or None when the chip (or that precision on it) is not in the table.

    ``precision`` is one of fp32 (plain IEEE fp32, no TF32), tf32, bf16, fp16, fp8.
    """
    check_precision(precision)
    part = find_part(device_name)
    if part is None or precision not in part.dense:
        return None
    note = part.notes.get(precision)
    detail = f"; {note}" if note else ""
    return part.dense[precision], f"{part.part}, {precision.upper()} dense{detail} ({part.source})"


def expected_multiprocessors(device_name: str) -> int | None:
    """SMs (or CUs) of the full chip the name stands for, None when the name is not in the table."""
    part = find_part(device_name)
    return part.multiprocessors if part else None


def table() -> list[dict[str, object]]:
    """The whole table as rows, for reports and docs."""
    return [
        {"part": p.part, "dense_flops_per_second": dict(p.dense), "source": p.source, "multiprocessors": p.multiprocessors}
        for p in PARTS
    ]


def visible_datasheet_peak(name: str, precision: str, visible_multiprocessors: int | None) -> tuple[float, str] | None:
    """The table's figure, unless fewer SMs are visible than the full chip has (a MIG slice
    or a partition would otherwise get the whole chip's peak)."""
    expected = expected_multiprocessors(name)
    if expected is not None and visible_multiprocessors is not None and visible_multiprocessors != expected:
        return None
    return datasheet_peak(name, precision)


def datasheet_peaks(index: int) -> dict[str, Any]:
    """Every precision's dense datasheet peak for CUDA device ``index``, with sources."""
    import torch  # here only: the table itself is data, read without torch (``dlscale forecast --device``)

    props = torch.cuda.get_device_properties(index)
    name, visible = props.name, props.multi_processor_count
    part = find_part(name)
    note = None
    if part is None:
        note = f"{name} is not in dlscale's datasheet table: no datasheet peak, MFU is null (never a guessed peak)"
    elif part.multiprocessors is not None and visible != part.multiprocessors:
        note = (
            f"{visible} multiprocessors visible where the full {part.part} has {part.multiprocessors} "
            "(a MIG slice or partition?): the full chip's peak would be wrong, so none is given"
        )
    by_precision = {}
    for precision in PRECISIONS:
        found = visible_datasheet_peak(name, precision, visible)
        by_precision[precision] = {"flops_per_second": found[0], "source": found[1]} if found else None
    return {
        "name": name,
        "part": part.part if part else None,
        "source": part.source if part else None,
        "multiprocessors": visible,
        "note": note,
        "peaks": by_precision,
    }
