import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dlscale.hardware import mfu as metrics
from dlscale.hardware.peaks import PeakFlops


def test_one_process_counts_are_its_own():
    assert metrics.global_counts(640, 2.5, torch.device("cpu")) == (640, 2.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0 did 100 samples in 1 s, rank 1 did 60 in 3 s: the job did 160 in 3 s
        samples, seconds = metrics.global_counts([100, 60][rank], [1.0, 3.0][rank], torch.device("cpu"))
        with open(os.path.join(out_dir, f"rank{rank}"), "w") as handle:
            handle.write(f"{samples} {seconds}")
    finally:
        dist.destroy_process_group()


def test_global_counts_sum_samples_and_take_the_slowest_rank(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert {(tmp_path / f"rank{r}").read_text() for r in (0, 1)} == {"160 3.0"}


def fake_peak(datasheet, measured, source="test datasheet"):
    return PeakFlops(datasheet=datasheet, datasheet_source=source if datasheet else None, measured=measured)


def test_cpu_mfu_is_against_the_measured_gemm_peak():
    usage = metrics.utilisation(1e6, 20_000, torch.device("cpu"), "fp32", peak=fake_peak(None, 100e9))
    assert usage["achieved_flops_per_second"] == 20e9
    assert usage["mfu"] == pytest.approx(0.2) and usage["mfu_measured_peak"] == pytest.approx(0.2)
    assert usage["mfu_datasheet"] is None and "measured" in usage["peak_source"]


def test_gpu_mfu_is_against_the_datasheet_for_all_devices_used():
    peak = fake_peak(989e12, 790e12, "H100 SXM dense BF16")
    usage = metrics.utilisation(1e12, 400.0, torch.device("cuda", 0), "bf16", world_size=2, peak=peak)
    assert usage["peak_flops_per_second"] == 2 * 989e12 and usage["peak_source"] == "H100 SXM dense BF16"
    assert usage["mfu"] == pytest.approx(400e12 / (2 * 989e12))
    assert usage["mfu_measured_peak"] == pytest.approx(400e12 / (2 * 790e12))


def test_an_unknown_gpu_gets_no_mfu_rather_than_a_guess():
    usage = metrics.utilisation(1e12, 10.0, torch.device("cuda", 0), "bf16", peak=fake_peak(None, 50e12))
    assert usage["mfu"] is None and usage["peak_flops_per_second"] is None
    assert usage["mfu_measured_peak"] == pytest.approx(0.2)


def test_utilisation_is_arithmetic_and_never_measures(monkeypatch):
    """Peaks are looked up in setup (peaks.peak_for); the metric only divides."""
    from dlscale.hardware import peaks

    def refuse(*args, **kwargs):
        raise AssertionError("utilisation must not look peaks up")

    monkeypatch.setattr(peaks, "measured_peaks", refuse)
    monkeypatch.setattr(peaks, "peak_for", refuse)
    usage = metrics.utilisation(1e6, 20_000, torch.device("cpu"), "fp32", peak=fake_peak(None, 100e9))
    assert usage["mfu"] == pytest.approx(0.2)
