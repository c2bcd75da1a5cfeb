"""The console tables of `dlscale compute` and `dlscale forecast` fit an 80-column terminal
without cutting a word ('…')."""

from __future__ import annotations

import io

from rich.console import Console


def _printed(draw) -> list[str]:
    buffer = io.StringIO()
    draw(Console(file=buffer, width=80, highlight=False, color_system=None))
    return buffer.getvalue().splitlines()


def test_compute_tables_fit_80_columns(tmp_path):
    import json

    from dlscale.cli.compute import print_report
    from dlscale.report.compute import compute_report

    run = tmp_path / "a-run-directory-with-a-long-name"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"kind": "summary", "schema_version": 1, "model": "mlp",
                                                  "data": "digits", "device": "cpu", "world_size": 1,
                                                  "total_flops": 3e15, "wall_seconds": 12.0}))
    lines = _printed(lambda console: print_report(console, compute_report(run)))
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    assert any("ratio" in line for line in lines)


def test_forecast_table_fits_80_columns():
    from dlscale.cli.forecast import _print_rows

    rows = [{"gpus": g, "nodes": max(1, g // 8), "step_time_s": 0.2081, "samples_per_second": 9821.4 * g,
             "speedup": 59.9, "efficiency": 0.936, "comm_s": 0.0002, "comm_exposed_s": 0.0002} for g in (1, 8, 4096)]
    inputs = {"model": "resnet50", "params": 25.6e6, "precision": "bf16", "grad_precision": "fp32", "batch_size": 256, "gpus_per_node": 8,
              "intra_network": {"name": "nvlink4"}, "inter_network": {"name": "ib-ndr"},
              "single_throughput_source": "given"}
    lines = _printed(lambda console: _print_rows(console, rows, inputs))
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    assert any("exposed ms" in line for line in lines)
