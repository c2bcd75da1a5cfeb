"""The datasheet table: dense figures (never the with-sparsity headline), careful name
matching (PCIe vs SXM, NVL, MIG slices), and None for anything it does not know."""

import math

import pytest

from dlscale.hardware.datasheet import PARTS, PRECISIONS, datasheet_peak, expected_multiprocessors, find_part

T = 1e12

KNOWN = [
    # (name as torch.cuda.get_device_name() prints it, precision, dense FLOP/s)
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4 * T),
    ("NVIDIA H100 80GB HBM3", "fp16", 989.4 * T),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7 * T),
    ("NVIDIA H100 80GB HBM3", "fp8", 1978.9 * T),
    ("NVIDIA H100 80GB HBM3", "fp32", 66.9 * T),
    ("NVIDIA H100 PCIe", "bf16", 756 * T),
    ("NVIDIA H100 PCIe", "tf32", 378 * T),
    ("NVIDIA H100 PCIe", "fp32", 51.2 * T),
    ("NVIDIA H200", "bf16", 989.4 * T),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312 * T),
    ("NVIDIA A100-SXM4-40GB", "tf32", 156 * T),
    ("NVIDIA A100-SXM4-40GB", "fp32", 19.5 * T),
    ("NVIDIA A100-PCIE-40GB", "bf16", 312 * T),
    ("NVIDIA A100 80GB PCIe", "fp16", 312 * T),
    ("Tesla V100-SXM2-16GB", "fp16", 125 * T),
    ("Tesla V100-SXM2-32GB", "fp32", 15.7 * T),
    ("Tesla V100-PCIE-16GB", "fp16", 112 * T),
    ("NVIDIA L4", "bf16", 121 * T),
    ("NVIDIA L4", "fp32", 30.3 * T),
    ("NVIDIA L40S", "bf16", 362.05 * T),
    ("NVIDIA L40S", "fp8", 733 * T),
    ("NVIDIA A10", "bf16", 125 * T),
    ("NVIDIA A10", "tf32", 62.5 * T),
    ("Tesla T4", "fp16", 65 * T),
    ("Tesla T4", "fp32", 8.1 * T),
    ("AMD Instinct MI300X", "bf16", 1307.4 * T),
    ("AMD Instinct MI300X", "fp32", 163.4 * T),
]


@pytest.mark.parametrize("name, precision, flops", KNOWN)
def test_known_gpus_give_their_dense_datasheet_figure(name, precision, flops):
    found = datasheet_peak(name, precision)
    assert found is not None
    value, source = found
    assert value == pytest.approx(flops)
    assert "dense" in source and precision.upper() in source


def test_h100_bf16_is_the_dense_figure_not_the_sparse_headline():
    value, source = datasheet_peak("NVIDIA H100 80GB HBM3", "bf16")
    assert value == pytest.approx(989e12, rel=0.01)
    assert not math.isclose(value, 1979e12, rel_tol=0.05)
    assert "sparsity" in source and "SXM" in source


def test_h100_pcie_and_sxm_differ_and_h200_computes_like_h100_sxm():
    sxm = datasheet_peak("NVIDIA H100 80GB HBM3", "bf16")[0]
    pcie = datasheet_peak("NVIDIA H100 PCIe", "bf16")[0]
    assert pcie < sxm
    for precision in PRECISIONS:
        assert datasheet_peak("NVIDIA H200", precision)[0] == datasheet_peak("NVIDIA H100 80GB HBM3", precision)[0]


def test_a100_pcie_has_the_sxm_tensor_peak_and_says_so():
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        assert datasheet_peak("NVIDIA A100-PCIE-40GB", precision)[0] == datasheet_peak("NVIDIA A100-SXM4-40GB", precision)[0]
    assert "same" in datasheet_peak("NVIDIA A100 80GB PCIe", "bf16")[1]


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA GeForce RTX 4090",  # not in the table
        "NVIDIA H100 NVL",  # per-GPU figures uncertain: left out, never given the SXM peak
        "NVIDIA H200 NVL",
        "NVIDIA H100",  # SXM or PCIe? ambiguous
        "NVIDIA L40",  # not the L40S
        "NVIDIA A10G",  # not the A10
        "NVIDIA RTX A1000",  # not an A100
        "NVIDIA A100-SXM4-40GB MIG 1g.5gb",  # a seventh of the chip
        "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
        "AMD Instinct MI300A",
        "",
    ],
)
def test_unknown_or_ambiguous_chips_get_none(name):
    for precision in PRECISIONS:
        assert datasheet_peak(name, precision) is None


@pytest.mark.parametrize(
    "name, precision",
    [
        ("Tesla V100-SXM2-16GB", "bf16"),
        ("Tesla V100-SXM2-16GB", "tf32"),
        ("Tesla T4", "bf16"),
        ("Tesla T4", "tf32"),
        ("NVIDIA A100-SXM4-80GB", "fp8"),
        ("NVIDIA A10", "fp8"),
    ],
)
def test_a_precision_the_chip_lacks_gives_none(name, precision):
    assert datasheet_peak(name, precision) is None


@pytest.mark.parametrize(
    "name", ["AMD EPYC", "AMD EPYC 7763 64-Core Processor", "Intel(R) Xeon(R) Platinum 8480+", "cpu", "Apple M2 Max"]
)
def test_cpus_are_never_in_the_table(name):
    assert find_part(name) is None
    assert all(datasheet_peak(name, p) is None for p in PRECISIONS)


def test_names_match_regardless_of_case_and_spacing():
    assert datasheet_peak("nvidia  h100 80gb hbm3", "bf16") == datasheet_peak("NVIDIA H100 80GB HBM3", "bf16")


def test_an_unknown_precision_is_a_programming_error():
    with pytest.raises(ValueError, match="precision"):
        datasheet_peak("NVIDIA H100 80GB HBM3", "float32")


def test_every_entry_has_a_source_and_plausible_figures():
    for part in PARTS:
        assert part.source and part.names and part.multiprocessors
        assert set(part.dense) <= set(PRECISIONS) and "fp32" in part.dense
        assert all(v > 1e12 for v in part.dense.values())
        for low_precision in ("tf32", "bf16", "fp16", "fp8"):  # tensor paths are never slower than plain fp32
            if low_precision in part.dense:
                assert part.dense[low_precision] >= part.dense["fp32"]
        if "fp8" in part.dense:
            # twice bf16; the L40S datasheet itself prints 362.05 (bf16) next to 733 (fp8)
            assert part.dense["fp8"] == pytest.approx(2 * part.dense["bf16"], rel=0.02)


def test_expected_multiprocessors_of_the_full_chip():
    assert expected_multiprocessors("NVIDIA H100 80GB HBM3") == 132
    assert expected_multiprocessors("NVIDIA A100-SXM4-80GB") == 108
    assert expected_multiprocessors("NVIDIA GeForce RTX 4090") is None
