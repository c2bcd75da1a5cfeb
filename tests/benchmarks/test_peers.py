"""The peers benchmark stays runnable and computes its figures as its README says.
(No speed is asserted: the benchmark itself measures that.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import run as peers_run  # noqa: E402
from workloads import WORKLOADS  # noqa: E402


def _record(step_seconds, evals=(), per_epoch=19, launched_at=100.0, first_step_unix=102.5):
    return {"step_seconds": step_seconds, "evals": list(evals), "steps_per_epoch": per_epoch,
            "launched_at": launched_at, "first_step_unix": first_step_unix}


def test_samples_per_second_leaves_out_warm_up_and_the_step_after_each_evaluation():
    workload = WORKLOADS["cnn-digits"]  # batch 64, 5 warm-up steps, 19 steps an epoch
    ends = [0.0]
    for step in range(1, 38):  # 2 epochs: every step 10 ms, but 1 s across the evaluation
        ends.append(ends[-1] + (1.0 if step == 19 else 0.010))
    got = peers_run.measures(_record(ends), "cnn-digits")
    intervals = [i for i in range(1, 38) if i >= workload.warmup_steps and i % 19 != 0]
    assert got["samples_per_second"] == pytest.approx(64 * len(intervals) / (0.010 * len(intervals)))
    assert got["startup_s"] == pytest.approx(2.5) and got["steps"] == 38


def test_time_to_target_ends_with_the_last_step_of_the_first_epoch_that_reaches_it():
    ends = [0.01 * i for i in range(57)]
    evals = [(19, 0.80), (38, 0.96), (57, 0.99)]  # the target is 0.95
    got = peers_run.measures(_record(ends, evals), "cnn-digits")
    assert got["time_to_target_s"] == pytest.approx(2.5 + ends[37])
    missed = peers_run.measures(_record(ends, [(19, 0.5), (38, 0.9)]), "cnn-digits")
    assert missed["time_to_target_s"] is None


def test_summary_gives_medians_and_ratios_to_plain():
    runs = [
        {"workload": "w", "framework": f, "samples_per_second": rate, "startup_s": start, "time_to_target_s": None,
         "steps": 8, "precision": "fp32"}
        for f, rate, start in [("plain", 100, 2.0), ("plain", 120, 2.2), ("plain", 110, 2.4),
                               ("dlscale", 99, 2.1), ("dlscale", 121, 2.3), ("dlscale", 132, 2.5)]
    ]
    peers_run.WORKLOADS["w"] = WORKLOADS["resnet18-32"]
    try:
        records = peers_run.summarize(runs, ["plain", "dlscale"], {"machine": {}, "commit": "c", "date": "d"})
    finally:
        del peers_run.WORKLOADS["w"]
    by = {r["entry"]: r for r in records}
    assert by["plain"]["samples_per_second"] == 110 and by["plain"]["ratio_to_plain"] == 1.0
    assert by["dlscale"]["samples_per_second"] == 121 and by["dlscale"]["ratio_to_plain"] == pytest.approx(1.1)
    assert by["dlscale"]["startup_minus_plain_s"] == pytest.approx(0.1)
    assert by["dlscale"]["samples_per_second_spread"] == pytest.approx((132 - 99) / 121)
    for key in ("workload", "framework", "samples_per_second", "ratio_to_plain", "time_to_target_s", "startup_s",
                "machine", "commit", "date"):
        assert key in by["dlscale"]


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["plain", "dlscale", "dlscale-fit"])
def test_the_harness_trains_and_reports_every_step(framework, tmp_path):
    """plain and dlscale need nothing beyond dlscale's own environment; the peers need the
    benchmark's venv and are exercised by running the benchmark itself."""
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(PEERS / "harness.py"), framework, "cnn-digits", "--text", "unused",
         "--workdir", str(tmp_path), "--out", str(out), "--launched-at", repr(time.time())],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.read_text())
    assert len(record["step_seconds"]) == 190 and record["steps_per_epoch"] == 19
    assert [steps for steps, _ in record["evals"]] == [19 * k for k in range(1, 11)]
    assert record["evals"][-1][1] > 0.9 and record["test_accuracy"] > 0.9
    figures = peers_run.measures(record, "cnn-digits")
    assert figures["samples_per_second"] > 0 and 0 < figures["startup_s"] < 120
