"""The GPU check script (benchmarks/gpu/check.sh) in its CPU smoke mode, run for real, so that
it does not rot between GPU loans; and its arithmetic: the targets and the independent MFU.
(No speed is asserted: on a CPU the figures are only checked to exist.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "check.sh"


def _check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu" / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


check = _check_module()


@pytest.mark.slow
def test_smoke_mode_runs_every_step_of_the_gpu_run_on_the_cpu(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["steps"]]
    # the same steps, in the same order, as the GPU run
    assert names == [s.name for s in check.gpu_steps(out)]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    for name in ("hw", "train-resnet50", "plain-resnet50", "train-gpt-small", "plain-gpt-small", "infer-resnet50",
                 "comm-nccl", "train-resnet18"):
        assert json.loads((out / f"{name}.json").read_text())  # each step's --json object was kept
        assert (out / f"{name}.log").read_text().startswith("$ ")  # and its command line and output
    figures = summary["figures"]
    assert figures["resnet50_train_samples_per_second"] > 0 and figures["gpt_small_tokens_per_second"] > 0
    assert figures["resnet50_overhead_ratio"] > 0 and figures["gpt_small_overhead_ratio"] > 0
    assert summary["targets"] is None  # smoke figures are never judged against the GPU targets
    assert "| train-gpt-small | ok |" in (out / "summary.md").read_text()
    # the plain loop ran at the batch the dlscale step used
    plain = json.loads((out / "plain-resnet50.json").read_text())
    assert plain["batch_size"] == json.loads((out / "train-resnet50.json").read_text())["results"][0]["batch_size"]


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    steps = [check.Step("broken", lambda r: [sys.executable, "-c", "raise SystemExit(3)"], 30),
             check.Step("fine", lambda r: [sys.executable, "-c", "print('{\"x\": 1}')"], 30),
             check.Step("slow", lambda r: [sys.executable, "-c", "import time; time.sleep(30)"], 1)]
    outcomes = [check.run_step(step, {}, tmp_path, dict(os.environ)) for step in steps]
    assert [o.status for o in outcomes] == ["failed", "ok", "timeout"]
    assert "exit code 3" in outcomes[0].reason and outcomes[1].result == {"x": 1}
    assert json.loads((tmp_path / "fine.json").read_text()) == {"x": 1}


def test_targets_are_judged_measured_against_target():
    numbers = {"resnet50_train_samples_per_second": 3600.0, "gpt_small_tokens_per_second": 450_000.0,
               "gpt_small_mfu": 0.42, "gpt_small_mfu_independent": 0.41, "resnet50_infer_predictions_per_second_at_256": None,
               "resnet50_overhead_ratio": 0.99, "gpt_small_overhead_ratio": 0.97}
    met = {row["figure"]: row["met"] for row in check.judge(numbers)}
    assert met == {"resnet50_train_samples_per_second": True, "gpt_small_tokens_per_second": False,
                   "gpt_small_mfu": True, "resnet50_infer_predictions_per_second_at_256": None,
                   "resnet50_overhead_ratio": True, "gpt_small_overhead_ratio": False, "gpt_small_mfu_agreement": True}


def test_the_independent_flop_count_agrees_with_dlscales_counter_within_5_percent():
    """The GPU run checks MFU against 6N + 12 L d T; on a CPU the same comparison is made on
    the FLOPs per token that `bench train` reports (the MFU's numerator)."""
    from dlscale.bench.train import Setting, Workload, measure
    from dlscale.models import model_info

    import torch

    info = model_info("gpt-tiny")
    row = measure(Workload(info, info.default_input_shape, info.default_num_classes), Setting(2, "fp32", False, False),
                  torch.device("cpu"), steps=1, warmup=0, repeats=1)
    independent = check.independent_gpt_flops_per_token("gpt-tiny")
    assert row["flops_per_token"] == pytest.approx(independent, rel=0.05)
    assert check.independent_gpt_flops_per_token("cnn") is None
