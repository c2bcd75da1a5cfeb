"""``dlscale.fit`` with modules of the user's own under DDP and FSDP, each in a real two-process
job under torchrun (Gloo): non-contiguous parameters, a frozen layer, buffers only; and tied
weights (the GPT's embedding and head) under FSDP, through a checkpoint and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import dlscale
from dlscale.errors import UserError
from dlscale.training.signals import DRILL_ENV
from tests.conftest import last_json, run_cli

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn
    import dlscale

    class NonContiguous(nn.Module):  # a transposed view as a parameter, as some ports of other code have
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(64, 16).t())
            self.out = nn.Linear(64, 4)
        def forward(self, x):
            return self.out(torch.relu(x @ self.weight))

    class Frozen(nn.Module):  # a frozen body under a trained head (fine-tuning)
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(16, 32)
            self.head = nn.Linear(32, 4)
            self.body.requires_grad_(False)
        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    out = sys.argv[1]
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    # one script, one torchrun job, several fit() calls in a row: the process group is reused
    for case, strategy in [("noncontiguous", "fsdp"), ("frozen", "ddp"), ("frozen", "fsdp")]:
        torch.manual_seed(0)
        model = {"noncontiguous": NonContiguous, "frozen": Frozen}[case]()
        frozen_before = model.body.weight.detach().clone() if case == "frozen" else None
        run_dir = f"{out}/{case}-{strategy}"
        result = dlscale.fit(model, (x, y), strategy=strategy, max_steps=4, batch_size=32, run_dir=run_dir,
                             verbose=False)
        report = {"case": f"{case}-{strategy}", "loss": result.summary["final_loss"],
                  "world": result.summary["world_size"]}
        if frozen_before is not None:
            from safetensors.torch import load_file  # the trained weights as the run saved them, whole

            saved = load_file(f"{run_dir}/model.safetensors")
            report["frozen_unchanged"] = bool(torch.equal(frozen_before, saved["body.weight"]))
        rank = torch.distributed.get_rank()
        with open(f"{out}/report-{case}-{strategy}-rank{rank}.json", "w") as file:  # one file each: no interleaving
            json.dump(report, file)
''')


@pytest.mark.slow
def test_own_modules_train_on_two_workers_one_fit_after_another(tmp_path):
    """Non-contiguous parameters under FSDP, a frozen layer under DDP and FSDP: each trains on
    two workers, the frozen layer stays as it was, and the script's fit() calls follow each
    other in one torchrun job."""
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs").glob("report-*.json"))]
    by_case: dict[str, list[dict]] = {}
    for report in reports:
        by_case.setdefault(report["case"], []).append(report)
    assert sorted(by_case) == ["frozen-ddp", "frozen-fsdp", "noncontiguous-fsdp"]
    for case, both in by_case.items():
        assert len(both) == 2 and all(r["world"] == 2 for r in both), case  # both workers, together
        assert torch.isfinite(torch.tensor(both[0]["loss"])) and both[0]["loss"] == pytest.approx(both[1]["loss"])
        if case.startswith("frozen"):
            assert all(r["frozen_unchanged"] for r in both), case  # requires_grad=False stays untrained


def test_a_module_with_nothing_to_train_is_refused_with_one_line(tmp_path):
    class BuffersOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(16, 4))

        def forward(self, x):
            return x @ self.w

    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with pytest.raises(UserError, match="BuffersOnly has no parameters to train"):
        dlscale.fit(BuffersOnly(), (x, y), max_steps=2, batch_size=16, run_dir=tmp_path / "run", verbose=False)
    frozen = torch.nn.Linear(16, 4).requires_grad_(False)
    with pytest.raises(UserError, match="Linear has no parameters to train"):
        dlscale.fit(frozen, (x, y), max_steps=2, batch_size=16, run_dir=tmp_path / "run2", verbose=False)


@pytest.mark.slow
def test_tied_weights_under_fsdp_survive_a_checkpoint_and_a_resume(tmp_path):
    """gpt-tiny ties its head to its embedding: one matrix. Sharded by FSDP2 on two workers,
    stopped by a time limit's SIGTERM after step 3 (the preemption drill), resumed to step 6, its
    weights file still holds one matrix that loads tied."""
    common = ["--model", "gpt-tiny", "--data", "synthetic:32", "--synthetic-samples", "256", "--batch-size", "8",
              "--strategy", "fsdp", "--nproc", "2", "--precision", "fp32", "--no-compile", "--json"]
    first = subprocess.run([sys.executable, "-m", "dlscale", "train", *common, "--max-steps", "6", "--run-dir",
                            str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                           env={**os.environ, DRILL_ENV: "3"})  # preempted after step 3, as a time limit would
    assert first.returncode == 128 + signal.SIGTERM and "checkpoint saved" in first.stderr, first.stderr[-3000:]
    resumed = run_cli(["train", "--resume", str(tmp_path / "run"), "--nproc", "2", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = last_json(resumed.stdout)
    assert summary["steps"] == 6 and torch.isfinite(torch.tensor(summary["final_loss"]))
    model = dlscale.load(tmp_path / "run").module
    assert model.lm_head.weight is model.wte.weight  # still one matrix after FSDP and the weights file
