import json
import re

import pytest
import torch

from conftest import last_json, run_cli
from dlscale.bench.scaling import add_speedup, combine_repeats, interleaved_schedule, measure_workers
from dlscale.bench.train import Setting, workload_for
from dlscale.cli import main
from dlscale.models import model_info


def rows(*pairs):
    return [{"workers": n, "step_time_s": t, "samples_per_second": s} for n, t, s in pairs]


def test_weak_scaling_compares_throughput_with_n_times_one_worker():
    got = add_speedup(rows((1, 0.10, 320.0), (2, 0.125, 512.0), (4, 0.2, 640.0)), strong=False)
    assert [r["speedup"] for r in got] == pytest.approx([1.0, 1.6, 2.0])
    assert [r["efficiency"] for r in got] == pytest.approx([1.0, 0.8, 0.5])


def test_strong_scaling_compares_step_times():
    got = add_speedup(rows((1, 0.40, 160.0), (2, 0.25, 256.0), (4, 0.16, 400.0)), strong=True)
    assert [r["speedup"] for r in got] == pytest.approx([1.0, 1.6, 2.5])
    assert [r["efficiency"] for r in got] == pytest.approx([1.0, 0.8, 0.625])


def test_one_worker_has_no_exposed_communication():
    """One worker has no all-reduce: its step is compute + data wait, never noise called comm."""
    workload = workload_for(model_info("mlp"), "synthetic")
    repeat = measure_workers(workload, Setting(8, "fp32", False, False), torch.device("cpu"), steps=3, warmup=1)
    assert repeat["workers"] == 1 and repeat["comm_exposed_s"] == 0.0
    row = combine_repeats([repeat, {**repeat, "step_time_s": 2 * repeat["step_time_s"]}])
    assert row["comm_exposed_s"] == 0.0
    assert row["compute_s"] + row["data_wait_s"] == pytest.approx(row["step_time_s"])


def test_repeats_combine_into_medians_with_their_spread():
    repeats = [{"workers": 2, "per_worker_batch": 16, "global_batch": 32, "step_time_s": t,
                "comm_exposed_s": c, "data_wait_s": 0.0} for t, c in ((0.10, 0.02), (0.30, 0.04), (0.20, 0.03))]
    row = combine_repeats(repeats)
    assert row["step_time_s"] == pytest.approx(0.20) and row["samples_per_second"] == pytest.approx(160.0)
    assert row["samples_per_second_p10"] < row["samples_per_second"] < row["samples_per_second_p90"]
    assert row["compute_s"] + row["comm_exposed_s"] == pytest.approx(row["step_time_s"])
    assert row["repeats"] == 3 and row["step_time_spread_s"] == pytest.approx(0.20)


def test_efficiency_above_100_percent_is_flagged_with_a_reason():
    base = {"workers": 1, "step_time_s": 0.10, "samples_per_second": 320.0}
    clear = {"workers": 2, "step_time_s": 0.075, "samples_per_second": 853.0}
    within = {**base, **{"samples_per_second_p10": 300.0, "samples_per_second_p90": 340.0}}
    got = add_speedup([dict(base), dict(clear)], strong=False)
    assert got[1]["efficiency"] == pytest.approx(853 / 640) and got[1]["superlinear"] is True
    assert got[1]["note"].startswith("efficiency above 100% at 2 workers: 133%")
    assert got[0]["superlinear"] is False and got[0]["note"] is None
    # the slowest repeat of 2 workers against the fastest of 1 is below 100%: noise is the likely reason
    noisy = {"workers": 2, "step_time_s": 0.095, "samples_per_second": 674.0,
             "samples_per_second_p10": 600.0, "samples_per_second_p90": 700.0}
    assert "likely noise" in add_speedup([within, noisy], strong=False)[1]["note"]
    spread_apart = {**noisy, "samples_per_second": 800.0, "samples_per_second_p10": 780.0}
    assert "fits a cache better" in add_speedup([within, spread_apart], strong=False)[1]["note"]
    ordinary = add_speedup(rows((1, 0.40, 160.0), (2, 0.25, 256.0)), strong=True)
    assert [r["superlinear"] for r in ordinary] == [False, False]


def test_repeats_are_interleaved_across_worker_counts():
    assert interleaved_schedule([1, 2], 3) == [1, 2, 1, 2, 1, 2]
    assert interleaved_schedule([1, 2, 4], 2) == [1, 2, 4, 1, 2, 4]
    assert interleaved_schedule([1, 2], 1) == [1, 2]


def test_a_real_one_and_two_worker_study(tmp_path):
    done = run_cli(["bench", "scaling", "--nproc", "1,2", "--model", "mlp", "--batch-size", "16", "--steps", "3",
                    "--repeats", "2", "--warmup", "1", "--run-dir", "s", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    one, two = result["results"]
    assert (one["workers"], two["workers"]) == (1, 2) and result["mode"] == "weak"
    assert two["global_batch"] == 32 and two["per_worker_batch"] == 16
    assert two["efficiency"] == pytest.approx(two["samples_per_second"] / (2 * one["samples_per_second"]))
    for row in (one, two):
        for key in ("samples_per_second", "speedup", "efficiency", "compute_s", "comm_exposed_s", "data_wait_s"):
            assert row[key] is not None and row[key] >= 0, key
    assert one["comm_exposed_s"] == 0.0 and one["repeats"] == two["repeats"] == 2
    assert one["samples_per_second_p10"] <= one["samples_per_second_p90"]
    assert result["provenance"]["torch"]
    assert json.loads((tmp_path / "s" / "bench-scaling.json").read_text()) == result
    assert len(list((tmp_path / "s" / "logs" / "2-workers").rglob("stderr.log"))) == 2 * 2  # 2 repeats x 2 ranks
    # without a terminal: one plain line per launch as it finishes, in the interleaved order, no ANSI codes
    finished = re.findall(r"^\[(\d+)/4\] (\d) worker", done.stderr, re.M)
    assert finished == [("1", "1"), ("2", "2"), ("3", "1"), ("4", "2")], done.stderr
    assert "\x1b[" not in done.stderr


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--nproc", "0,2"], "--nproc takes worker counts of at least 1"),
        (["--nproc", "two"], "--nproc takes worker counts like 1,2,4"),
        (["--strong", "--batch-size", "30", "--nproc", "1,4"], "does not split over [4] workers"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, fragment):
    assert main(["bench", "scaling", "--run-dir", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not (tmp_path / "s").exists()
