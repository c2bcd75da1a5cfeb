"""``dlscale hw``: tables on stderr, one JSON object last on stdout, --no-measure and
--remeasure, and the GPU display rendered from a pretend report."""

import io
import json

import pytest
import torch
from rich.console import Console

from dlscale.hardware import peaks
from dlscale.hardware.report import hw_report
from dlscale.cli import build_parser, main
from dlscale.cli import hw


def test_hw_flags_are_the_contract():
    parser = build_parser()._subparsers._group_actions[0].choices["hw"]
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--json", "--remeasure", "--no-measure"} <= flags


def test_json_is_one_object_last_with_inventory_and_measured_peaks(capsys):
    assert main(["hw", "--json"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[-1])
    assert {"hostname", "platform", "torch", "cuda", "cpu", "gpus", "driver", "gpu_count", "datasheet_peaks"} <= set(report)
    assert report["cpu"]["model"] and report["cpu"]["logical_cores"] >= 1 and report["cpu"]["memory_bytes"] > 0
    cpu = report["measured_peaks"]["devices"]["cpu"]
    assert cpu["gemm_flops_per_second"]["fp32"] > 0 and cpu["copy_bytes_per_second"] > 0
    assert "provenance" in report["measured_peaks"]
    assert "machine" in err and "GFLOP/s" in err and "read + write" in err
    if not torch.cuda.is_available():
        assert "no CUDA GPU found: MFU on CPU uses the measured GEMM peak" in err


def test_no_measure_measures_nothing(monkeypatch, capsys):
    def refuse():
        raise AssertionError("--no-measure must not measure")

    monkeypatch.setattr(peaks, "measure_peaks", refuse)
    assert main(["hw", "--no-measure", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["measured_peaks"] is None and "not measured" in err


def test_remeasure_measures_even_with_a_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(tmp_path))
    calls = []

    def measure():
        calls.append(1)
        return {
            "devices": {"cpu": {"name": "x", "gemm_flops_per_second": {"fp32": 1e11, "bf16": 2e11}}},
            "provenance": {"date": "today", "seconds": 0.1},
        }

    monkeypatch.setattr(peaks, "measure_peaks", measure)
    assert main(["hw"]) == 0 and main(["hw"]) == 0
    assert len(calls) == 1
    assert main(["hw", "--remeasure"]) == 0
    assert len(calls) == 2
    assert "measuring peaks" in capsys.readouterr().err


def test_remeasure_and_no_measure_together_is_a_user_error(capsys):
    assert main(["hw", "--remeasure", "--no-measure"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def pretend_report():
    """What hw_report says on a node with one H100 and one chip the table does not know."""
    h100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 * 2**30, "compute_capability": "9.0", "multiprocessors": 132}
    other = {"index": 1, "name": "NVIDIA GeForce RTX 5090", "memory_bytes": 32 * 2**30, "compute_capability": "12.0", "multiprocessors": 170}
    sheet = {
        "name": h100["name"], "part": "NVIDIA H100 SXM5", "source": "H100 whitepaper", "multiprocessors": 132, "note": None,
        "peaks": {"fp32": {"flops_per_second": 66.9e12, "source": "s"}, "tf32": {"flops_per_second": 494.7e12, "source": "s"},
                  "bf16": {"flops_per_second": 989.4e12, "source": "s"}, "fp16": {"flops_per_second": 989.4e12, "source": "s"},
                  "fp8": {"flops_per_second": 1978.9e12, "source": "s"}},
    }
    unknown = {"name": other["name"], "part": None, "source": None, "multiprocessors": 170,
               "note": "not in dlscale's datasheet table", "peaks": dict.fromkeys(("fp32", "tf32", "bf16", "fp16", "fp8"))}
    gpu_rates = {"gemm_flops_per_second": {"fp32": 51e12, "tf32": 370e12, "bf16": 790e12, "fp16": 800e12},
                 "gemm_sizes": dict.fromkeys(("fp32", "tf32", "bf16", "fp16"), 8192),
                 "copy_bytes_per_second": 3.0e12, "copy_buffer_bytes": 2**30}
    report = hw_report(measure=False)
    report.update(
        gpus=[h100, other], gpu_count=2, driver="560.35.03", cuda="12.6",
        datasheet_peaks={"cuda:0": sheet, "cuda:1": unknown},
        measured_peaks={
            "devices": {"cpu": {"gemm_flops_per_second": {"fp32": 1e11}, "copy_bytes_per_second": 2e10, "copy_buffer_bytes": 2**28},
                        "cuda:0": gpu_rates, "cuda:1": {"name": other["name"], "error": "CUDA out of memory"}},
            "provenance": {"date": "2026-01-01", "torch": "2.11", "threads": 16, "seconds": 4.2},
            "cache": {"path": "/tmp/x.json", "hit": False},
        },
    )
    return report


def test_gpu_tables_show_datasheet_measured_ratio_and_unknown_chips():
    buffer = io.StringIO()
    hw.print_report(Console(file=buffer, width=200, highlight=False), pretend_report())
    text = buffer.getvalue()
    assert "NVIDIA H100 80GB HBM3" in text and "560.35.03" in text and "9.0" in text
    assert "989.4 TFLOP/s" in text and "790.0 TFLOP/s" in text and "80%" in text
    assert "not in table: MFU null" in text and "CUDA out of memory" in text
    assert "3.0 TB/s" in text and "1.0 GiB" in text
    assert "no CUDA GPU found" not in text


@pytest.mark.slow
def test_python_m_dlscale_hw_no_measure(cli):
    done = cli(["hw", "--no-measure", "--json"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["measured_peaks"] is None


def test_a_measurement_taken_on_a_busy_machine_is_flagged():
    report = pretend_report()
    report["measured_peaks"]["provenance"].update(busy=True, load_average_before=3.4, threads=2)
    buffer = io.StringIO()
    hw.print_report(Console(file=buffer, width=200, highlight=False), report)
    assert "busy while measuring" in buffer.getvalue() and "--remeasure" in buffer.getvalue()
