"""The shared number formats and the petaflop/s-day."""

import pytest

from dlscale.units import PFS_DAY_FLOPS, format_bytes, pfs_days, si


def test_si_stops_at_tera_so_gpu_peaks_read_against_their_datasheets():
    assert si(1.9789e15, "FLOP/s") == "1978.9 TFLOP/s"
    assert si(66.9e12, "FLOP/s") == "66.9 TFLOP/s"
    assert si(20e9, "B/s") == "20.0 GB/s"
    assert si(1500, "FLOP/s") == "1.5 kFLOP/s"
    assert si(12, "B/s") == "12 B/s"
    assert si(None, "FLOP/s") == "-"


def test_format_bytes():
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(100) == "100 bytes"


def test_a_petaflop_per_second_day():
    assert PFS_DAY_FLOPS == 8.64e19 and pfs_days(8.64e20) == pytest.approx(10.0)
