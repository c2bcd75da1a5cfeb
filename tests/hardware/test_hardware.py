"""Inventory, measured peaks and their per-machine cache, and the peaks MFU is computed
against. The real CPU measurement runs once per test session (conftest gives the session
its own cache folder); cache behaviour is tested with a counting fake measurement."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from stopped_process import stopped_lock_holder
import torch

from dlscale.hardware import contention, datasheet, inventory, microbench, peaks
from dlscale.hardware.report import hw_report


def fake_measurement(fp32=100e9, bf16=300e9):
    return {
        "devices": {
            "cpu": {
                "name": "fake cpu",
                "gemm_flops_per_second": {"fp32": fp32, "bf16": bf16},
                "copy_bytes_per_second": 20e9,
            }
        },
        "provenance": {"date": "2026-01-01T00:00:00+00:00", "sizes": {"cpu": {"fp32": 2048, "bf16": 2048}}},
    }


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A private cache folder and a fake measurement that counts its calls."""
    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def measure():
        calls.append(1)
        return fake_measurement(fp32=100e9 + len(calls))

    monkeypatch.setattr(peaks, "measure_peaks", measure)
    return calls


# --------------------------------------------------------------------------- inventory


def test_inventory_keeps_its_keys():
    inv = inventory.inventory()
    assert {"hostname", "platform", "python", "dlscale", "torch", "cuda", "cpu", "gpus"} <= set(inv)
    assert {"model", "logical_cores", "torch_threads", "memory_bytes"} <= set(inv["cpu"])
    assert inv["cpu"]["memory_bytes"] > 0 and inv["cpu"]["torch_threads"] >= 1
    assert isinstance(inventory.cpu_model(), str) and inventory.cpu_model()
    if not torch.cuda.is_available():
        assert inventory.gpus() == []


def test_core_counts_are_whole_numbers_or_unknown():
    for value in (inventory.physical_cores(), inventory.usable_cores()):
        assert value is None or (isinstance(value, int) and value >= 1)


# --------------------------------------------------------------------------- the cache


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(tmp_path / "mine"))
    assert peaks.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DLSCALE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert peaks.cache_dir() == tmp_path / "xdg" / "dlscale"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert peaks.cache_dir() == tmp_path / "home" / ".cache" / "dlscale"


def test_second_call_reads_the_cache_and_does_not_measure(counted, tmp_path):
    first = peaks.measured_peaks()
    assert len(counted) == 1 and first["cache"]["hit"] is False
    path = peaks.cache_path()
    assert path.parent == tmp_path / "cache" and path.is_file()
    stored = json.loads(path.read_text())
    assert stored["fingerprint"] == peaks.fingerprint()
    second = peaks.measured_peaks()
    assert len(counted) == 1 and second["cache"]["hit"] is True
    assert second["devices"] == first["devices"] and second["provenance"] == first["provenance"]


def test_figures_from_a_busy_machine_are_replaced_once_it_is_quiet(counted, monkeypatch):
    busy = fake_measurement(fp32=50e9)
    busy["provenance"]["busy"] = True
    monkeypatch.setattr(peaks, "measure_peaks", lambda: counted.append(1) or busy)
    peaks.measured_peaks()
    monkeypatch.setattr(contention, "machine_busy", lambda: True)
    assert peaks.measured_peaks()["cache"]["hit"] is True and len(counted) == 1  # still busy: keep them
    monkeypatch.setattr(contention, "machine_busy", lambda: False)
    monkeypatch.setattr(peaks, "measure_peaks", lambda: counted.append(1) or fake_measurement(fp32=200e9))
    fresh = peaks.measured_peaks()
    assert len(counted) == 2 and fresh["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] == 200e9
    assert peaks.measured_peaks()["cache"]["hit"] is True  # quiet figures stay


def test_remeasure_measures_again_and_refreshes_the_file(counted):
    peaks.measured_peaks()
    again = peaks.measured_peaks(remeasure=True)
    assert len(counted) == 2 and again["cache"]["hit"] is False
    assert peaks.measured_peaks()["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] == 100e9 + 2


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        json.dumps({"devices": {}, "provenance": {}}),  # no fingerprint
        "\xff\xfe",
    ],
)
def test_a_corrupt_cache_file_is_measured_again(counted, content):
    path = peaks.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="latin-1")
    result = peaks.measured_peaks()
    assert len(counted) == 1 and result["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] > 0
    assert json.loads(path.read_text())["fingerprint"] == peaks.fingerprint()  # rewritten whole


@pytest.mark.parametrize("bad_rate", [-1.0, 0, "fast", None, True])
def test_a_cache_file_with_nonsense_figures_is_measured_again(counted, bad_rate):
    path = peaks.cache_path()
    path.parent.mkdir(parents=True)
    data = {"fingerprint": peaks.fingerprint(), **fake_measurement()}
    data["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] = bad_rate
    path.write_text(json.dumps(data))
    peaks.measured_peaks()
    assert len(counted) == 1


def test_a_file_from_another_machine_is_not_used(counted):
    path = peaks.cache_path()
    path.parent.mkdir(parents=True)
    other = {**peaks.fingerprint(), "hostname": "elsewhere"}
    path.write_text(json.dumps({"fingerprint": other, **fake_measurement()}))
    peaks.measured_peaks()
    assert len(counted) == 1


def test_an_unwritable_cache_folder_still_gives_figures(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be created
    monkeypatch.setattr(peaks, "measure_peaks", fake_measurement)
    result = peaks.measured_peaks()
    assert result["cache"]["path"] is None and result["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] > 0


# --------------------------------------------------------------------------- a stuck lock


def test_a_stopped_lock_holder_is_waited_for_only_so_long(counted, capfd):
    path = peaks.cache_path()
    with stopped_lock_holder(path) as holder:
        started = time.monotonic()
        with contention.machine_lock(path, wait_s=0.5) as locked:
            waited = time.monotonic() - started
        assert locked is False and 0.5 <= waited < 5
    line = capfd.readouterr().err.strip()
    assert line.startswith("dlscale: the cache ") and str(path) in line and "measuring without it" in line
    assert f"process {holder.pid}, which is stopped (Ctrl-Z or suspended) and has not let go for 0.5 s" in line
    assert "\n" not in line


def test_measured_peaks_measure_without_the_cache_while_a_stopped_process_holds_it(counted, monkeypatch, capfd):
    monkeypatch.setattr(contention, "LOCK_WAIT_S", 0.5)
    monkeypatch.setattr(contention, "stuck_locks_reported", set())
    path = peaks.cache_path()
    with stopped_lock_holder(path):
        started = time.monotonic()
        result = peaks.measured_peaks()
        assert time.monotonic() - started < 5
        assert len(counted) == 1 and result["cache"] == {"path": None, "hit": False}
        assert result["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] > 0
        assert not path.exists()  # nothing written beside the holder
        peaks.measured_peaks()  # still stuck: measured again, said once
        assert len(counted) == 2
    err = capfd.readouterr().err
    assert err.count("dlscale: the cache ") == 1 and "measuring without it" in err
    # the holder is gone: the lock is free again and the cache is written as before
    assert peaks.measured_peaks()["cache"]["path"] == str(path) and path.is_file()
    assert peaks.measured_peaks()["cache"]["hit"] is True and len(counted) == 3


def test_a_lock_freed_within_the_wait_is_taken(tmp_path):
    path = tmp_path / "peaks.json"
    with stopped_lock_holder(path) as holder:
        holder.send_signal(signal.SIGCONT)  # it resumes and exits, which lets go of the lock
        with contention.machine_lock(path, wait_s=10) as locked:
            assert locked is True


# --------------------------------------------------------------------------- real measurement (CPU)


def test_cpu_peak_has_no_datasheet_and_a_measured_rate():
    peak = peaks.peak_for(torch.device("cpu"), "fp32")
    assert peak.datasheet is None and peak.datasheet_source is None
    assert peak.measured is not None and peak.measured > 1e8
    assert peaks.peak_for(torch.device("cpu"), "bf16").measured > 0
    assert peaks.peak_for(torch.device("cpu"), "fp16").measured is None  # not measured on CPUs


def test_real_measurement_has_its_provenance():
    result = peaks.measured_peaks()
    cpu = result["devices"]["cpu"]
    assert set(cpu["gemm_flops_per_second"]) == {"fp32", "bf16"}
    assert cpu["copy_bytes_per_second"] > 1e8 and cpu["copy_buffer_bytes"] > 0
    assert cpu["seconds"] < 30
    prov = result["provenance"]
    assert {"date", "torch", "dlscale", "sizes", "repeats", "threads", "statistic", "copy", "busy"} <= set(prov)
    assert prov["threads"] == torch.get_num_threads() and prov["sizes"]["cpu"]["fp32"] >= 256
    assert "read + write" in prov["copy"]


def test_peak_flops_rejects_unknown_precisions():
    with pytest.raises(ValueError):
        peaks.peak_for(torch.device("cpu"), "float32")


def test_other_device_types_get_no_peaks():
    assert peaks.peak_for(torch.device("meta"), "fp32") == peaks.PeakFlops(None, None, None)


# --------------------------------------------------------------------------- CUDA logic, with a pretend GPU


@pytest.fixture
def pretend_gpu(monkeypatch):
    """A pretend CUDA device 0: its properties and its measured rates, no GPU needed."""
    gpu = SimpleNamespace(name="NVIDIA H100 80GB HBM3", multi_processor_count=132, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: gpu)
    rates = {"fp32": 50e12, "tf32": 380e12, "bf16": 780e12, "fp16": 790e12}
    measured = {"devices": {"cuda:0": {"gemm_flops_per_second": rates}}, "provenance": {}}
    monkeypatch.setattr(peaks, "measured_peaks", lambda remeasure=False: measured)
    return gpu


def test_a_known_gpu_gets_its_dense_datasheet_and_measured_peaks(pretend_gpu):
    peak = peaks.peak_for(torch.device("cuda", 0), "bf16")
    assert peak.datasheet == pytest.approx(989.4e12) and "H100 SXM5" in peak.datasheet_source
    assert peak.measured == 780e12


def test_fp32_means_tf32_only_when_torch_lets_matmuls_use_it(pretend_gpu):
    with microbench.fp32_matmul_mode(False):
        assert not microbench.tf32_matmul_enabled()
        plain = peaks.peak_for(torch.device("cuda", 0), "fp32")
    with microbench.fp32_matmul_mode(True):
        assert microbench.tf32_matmul_enabled()
        tf32 = peaks.peak_for(torch.device("cuda", 0), "fp32")
    assert plain.datasheet == pytest.approx(66.9e12) and plain.measured == 50e12
    assert tf32.datasheet == pytest.approx(494.7e12) and tf32.measured == 380e12
    assert "TF32" in tf32.datasheet_source


def test_tf32_switch_is_restored_after_measuring():
    before = microbench.tf32_matmul_enabled()
    with microbench.fp32_matmul_mode(not before):
        assert microbench.tf32_matmul_enabled() is (not before)
    assert microbench.tf32_matmul_enabled() is before


def test_a_chip_without_tf32_keeps_its_fp32_peak_when_tf32_is_on(pretend_gpu):
    pretend_gpu.name, pretend_gpu.multi_processor_count, pretend_gpu.major = "Tesla V100-SXM2-16GB", 80, 7
    with microbench.fp32_matmul_mode(True):
        peak = peaks.peak_for(torch.device("cuda", 0), "fp32")
    assert peak.datasheet == pytest.approx(15.7e12)
    assert peaks.peak_for(torch.device("cuda", 0), "bf16").datasheet is None


def test_an_unknown_gpu_gets_no_datasheet_peak_but_keeps_its_measured_one(pretend_gpu):
    pretend_gpu.name = "NVIDIA GeForce RTX 5090"
    peak = peaks.peak_for(torch.device("cuda", 0), "bf16")
    assert peak.datasheet is None and peak.datasheet_source is None and peak.measured == 780e12


def test_a_slice_of_a_chip_gets_no_full_chip_peak(pretend_gpu):
    pretend_gpu.multi_processor_count = 16  # a MIG slice that kept the plain name
    assert peaks.peak_for(torch.device("cuda", 0), "bf16").datasheet is None
    sheet = datasheet.datasheet_peaks(0)
    assert sheet["peaks"]["bf16"] is None and "slice" in sheet["note"]


def test_datasheet_peaks_lists_every_precision_with_sources(pretend_gpu):
    sheet = datasheet.datasheet_peaks(0)
    assert sheet["part"] == "NVIDIA H100 SXM5" and sheet["note"] is None
    assert set(sheet["peaks"]) == {"fp32", "tf32", "bf16", "fp16", "fp8"}
    assert sheet["peaks"]["bf16"]["flops_per_second"] == pytest.approx(989.4e12)
    assert all(entry["source"] for entry in sheet["peaks"].values())


# --------------------------------------------------------------------------- hw_report


def test_hw_report_without_measuring_measures_nothing(monkeypatch):
    def refuse():
        raise AssertionError("--no-measure must not measure")

    monkeypatch.setattr(peaks, "measure_peaks", refuse)
    report = hw_report(measure=False)
    assert report["measured_peaks"] is None
    assert {"hostname", "cpu", "gpus", "driver", "gpu_count", "datasheet_peaks"} <= set(report)
    json.dumps(report)


def test_machine_keys_are_the_one_value_keys_of_the_report():
    from dlscale.hardware.report import MACHINE_KEYS

    report = hw_report(measure=False)
    assert set(MACHINE_KEYS) <= set(report)
    assert all(report[key] is None or isinstance(report[key], (str, int)) for key in MACHINE_KEYS)


def test_hw_report_carries_the_measured_peaks():
    report = hw_report()
    assert report["measured_peaks"]["devices"]["cpu"]["gemm_flops_per_second"]["fp32"] > 0
    assert report["gpu_count"] == len(report["gpus"])


# --------------------------------------------------------------------------- a real GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_measurement_is_sane():
    result = peaks.measured_peaks()
    gpu = result["devices"]["cuda:0"]
    assert "error" not in gpu
    assert gpu["gemm_flops_per_second"]["fp32"] > 1e12 and gpu["copy_bytes_per_second"] > 1e11
    peak = peaks.peak_for(torch.device("cuda", 0), "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert peak.measured and peak.measured > 1e12
    if peak.datasheet:  # dense datasheet: a large GEMM reaches a good part of it, never much more
        assert 0.3 < peak.measured / peak.datasheet < 1.15
