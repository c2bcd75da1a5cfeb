"""Interference is measured and said: load, steal and the spread of repeats decide
``reliable``, and "fastest" picks refuse to choose between overlapping settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import last_json, run_cli
from dlscale.bench import reliability
from dlscale.bench.reliability import Interference, spread_stats, verdict
from dlscale.bench.run_train import fastest_pick
from dlscale.cli.bench_infer import _fastest

RESULT_KEYS = {"reliable", "unreliable_reason", "load_average_before", "load_average_after", "steal_fraction"}


def interference(before: float, after: float, own_load: float = 0.0, steal: float | None = 0.0) -> Interference:
    return Interference(load_average_before=before, cpu_before=None, started=0.0, own_cpu_before=0.0,
                        load_average_after=after, steal_fraction=steal, own_load=own_load)


def assert_consistent(result: dict) -> None:
    """The keys are there and agree with each other; a quiet run is not promised to be reliable."""
    assert RESULT_KEYS <= set(result)
    assert isinstance(result["reliable"], bool)
    assert (result["unreliable_reason"] is None) == result["reliable"]
    assert result["load_average_before"] >= 0 and result["load_average_after"] >= 0


# --------------------------------------------------------------------------- units


def test_spread_stats_median_deciles_and_cv():
    stats = spread_stats([10.0, 12.0, 14.0, 16.0, 18.0])
    assert stats["n"] == 5 and stats["median"] == 14.0
    assert stats["p10"] == pytest.approx(10.8) and stats["p90"] == pytest.approx(17.2)  # numpy's linear percentiles
    assert stats["cv"] == pytest.approx(3.1622776 / 14, rel=1e-6)  # sample stdev over mean
    assert spread_stats([5.0]) == {"n": 1, "median": 5.0, "p10": 5.0, "p90": 5.0, "cv": None}
    assert spread_stats([])["cv"] is None


def test_verdict_names_the_load_the_spread_and_the_steal():
    steady = spread_stats([100.0, 101.0, 99.0])
    assert verdict(steady, interference(0.3, 0.9, own_load=0.8), cores=2) == (True, None)

    reliable, reason = verdict(spread_stats([100.0, 60.0, 130.0]), interference(4.1, 1.0), cores=2)
    assert not reliable
    assert reason == ("load average 4.1 before the run on 2 cores, more than the 1 left beside the benchmark; "
                      "repeats vary by 36% (CV)")

    # after the run the load holds dlscale's own share: only the rest counts
    assert verdict(None, interference(0.2, 2.5, own_load=2.0), cores=2)[0]
    reliable, reason = verdict(None, interference(0.2, 3.5, own_load=1.0), cores=2)
    assert not reliable and "3.5 after (2.5 of it not dlscale's)" in reason

    reliable, reason = verdict(None, interference(0.0, 0.0, steal=0.08), cores=8)
    assert not reliable and reason == "the hypervisor stole 8% of the CPU time (steal)"
    # a lone core: half a core of others' load is tolerated, not every speck of background
    assert verdict(None, interference(0.4, 0.4), cores=1)[0]


def test_an_mfu_above_100_percent_makes_the_figures_unreliable_saying_why():
    """bf16 on a CPU without bf16 units: the measured bf16 GEMM peak (1.2 GFLOP/s here) is below
    what oneDNN's bf16 convolutions reach, and a summary said "MFU 470.84%" without a word."""
    assert reliability.above_peak([0.4, None, 1.0]) is None
    fields = reliability.fields(interference(0.0, 0.0), [], also=[reliability.above_peak([None, 4.7084, 0.5])])
    assert fields["reliable"] is False
    assert fields["unreliable_reason"].startswith("MFU of 471% is above 100%: the peak it divides by is below")
    loaded = reliability.fields(interference(4.1, 0.0), [], also=[reliability.above_peak([2.0])])
    assert loaded["unreliable_reason"].startswith("load average 4.1 before") and "; MFU of 200%" in loaded["unreliable_reason"]
    assert reliability.fields(interference(0.0, 0.0), [], also=[None])["reliable"] is True


def test_repeats_is_a_count_of_at_least_one_or_auto_else_one_error_line():
    from dlscale.errors import UserError

    assert reliability.parse_repeats("auto") == "auto" and reliability.parse_repeats("3") == 3
    for bad in ("0", "-1", "x", "2.5", ""):
        with pytest.raises(UserError, match=f"--repeats must be a whole number of at least 1 or 'auto', got '{bad}'"):
            reliability.parse_repeats(bad)


def test_proc_stat_is_read_on_this_machine(tmp_path):
    steal, total = reliability.cpu_times()
    assert 0 <= steal < total
    old_kernel = tmp_path / "stat"
    old_kernel.write_text("cpu  4907088 948 534862 7033783 30113 0 10419\n")  # no steal column
    assert reliability.cpu_times(str(old_kernel)) is None
    measured = Interference.snapshot()
    sum(range(10**6))
    measured.after()
    assert 0 <= measured.steal_fraction <= 1 and measured.load_average_after is not None


def test_auto_repeats_stop_once_the_median_settles_or_the_budget_runs_out():
    values = iter([10.0, 20.0, 10.0, 10.2, 10.1])
    measured, stable = reliability.repeat(lambda: next(values), "auto", budget_s=60)
    assert measured == [10.0, 20.0, 10.0, 10.2] and stable  # medians 15, 10, 10.1: the last two within 5%
    noisy = iter([1.0, 100.0] * 50)
    measured, stable = reliability.repeat(lambda: next(noisy), "auto", budget_s=0.0)
    assert len(measured) == 1 and stable is False
    assert reliability.repeat(lambda: 1.0, 2) == ([1.0, 1.0], None)


# --------------------------------------------------------------------------- the tie rule


def infer_row(batch: int, rate: float, p10: float, p90: float) -> dict:
    return {"batch_size": batch, "precision": "fp32", "mode": "eager", "skipped": None, "predictions_per_second": rate,
            "predictions_per_second_p10": p10, "predictions_per_second_p90": p90, "latency_p50_ms": 1.0,
            "test_accuracy": None, "tokens_per_second": None}


def test_fastest_names_no_winner_when_the_repeats_overlap():
    rows = [infer_row(8, 1000, 900, 1100), infer_row(64, 1050, 1000, 1150)]
    assert _fastest(rows, False) == ("fastest: no clear winner between fp32 eager at batch 64 and fp32 eager at batch 8 "
                                     "(their repeats overlap); re-run on a quiet machine or with more --repeats")
    rows[0] = infer_row(8, 600, 550, 650)
    assert _fastest(rows, False).startswith("fastest: fp32 eager at batch 64: 1,050 predictions/s")


def test_tune_records_a_tie_instead_of_a_pick():
    def row(batch, p10, p90):
        return {"batch_size": batch, "precision": "fp32", "compiled": False, "channels_last": False,
                "samples_per_second_p10": p10, "samples_per_second_p90": p90}

    tied = fastest_pick([row(64, 95, 110), row(32, 90, 100)])
    assert tied["fastest"] is None and [s["batch_size"] for s in tied["tied"]] == [64, 32]
    clear = fastest_pick([row(64, 150, 160), row(32, 90, 100)])
    assert clear == {"fastest": {"batch_size": 64, "precision": "fp32", "compiled": False, "channels_last": False},
                     "tied": None}


# --------------------------------------------------------------------------- real runs


def test_a_loaded_machine_makes_the_benchmark_unreliable_and_says_why(tmp_path):
    """Two busy loops on the benchmark's own cores: the load average says the figures are not sound."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    pin = f"import os\nos.sched_setaffinity(0, {set(cpus)})\n"
    busy = [subprocess.Popen([sys.executable, "-c", pin + "while True: pass"]) for _ in range(2)]
    try:
        # the 1-minute load average follows the busy loops with a lag: wait until it shows them
        deadline = time.monotonic() + 120
        while os.getloadavg()[0] <= reliability.load_limit(len(cpus)) + 0.3 and time.monotonic() < deadline:
            time.sleep(1)
        bench = pin + "import sys\nfrom dlscale.cli import main\nsys.exit(main(sys.argv[1:]))"
        done = subprocess.run(
            [sys.executable, "-c", bench, "bench", "train", "--model", "mlp", "--batch-size", "32", "--steps", "4",
             "--repeats", "3", "--run-dir", str(tmp_path / "b"), "--json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["reliable"] is False
    assert "load average" in result["unreliable_reason"] and f"on {len(cpus)} core" in result["unreliable_reason"]
    assert f"warning: figures unreliable: {result['unreliable_reason']}" in done.stderr
    row = result["results"][0]
    assert row["samples_per_second_p10"] <= row["samples_per_second"] <= row["samples_per_second_p90"]


def test_bench_infer_says_whether_it_can_be_trusted_with_each_rows_spread(tmp_path):
    done = run_cli(["bench", "infer", "--model", "mlp", "--batch-sizes", "2", "--precisions", "fp32", "--device", "cpu",
                    "--warmup", "1", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert_consistent(result)
    (row,) = result["results"]
    assert row["repeats"] == 3 and row["stable"] is None and row["timed_batches"] == 150
    assert row["predictions_per_second_p10"] <= row["predictions_per_second_p90"]
    assert row["predictions_per_second_cv"] >= 0
    assert ("warning: figures unreliable" in done.stderr) == (not result["reliable"])


def test_bench_train_repeats_auto_records_how_many_and_whether_they_settled(tmp_path):
    done = run_cli(["bench", "train", "--model", "mlp", "--batch-size", "16", "--steps", "2", "--repeats", "auto",
                    "--budget-s", "5", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert_consistent(result)
    row = result["results"][0]
    assert isinstance(row["stable"], bool) and row["repeats"] == len(row["step_times_s"]) >= 1
    assert row["repeats"] >= 3 or not row["stable"]
    assert f"{row['repeats']} repeats, median " in done.stderr


def test_a_training_summary_says_whether_its_figures_can_be_trusted(tmp_path):
    done = run_cli(["train", "--model", "mlp", "--max-steps", "20", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert_consistent(summary)
    assert {"samples_per_second_p10", "samples_per_second_p90", "samples_per_second_cv"} <= set(summary)
    assert ("warning: figures unreliable" in done.stderr) == (not summary["reliable"])
