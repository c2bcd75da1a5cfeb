"""Without a terminal (stderr is a pipe, as in CI or a batch job's log) the long commands
print one plain line per setting as it finishes, and no ANSI escape codes."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from conftest import run_cli
from dlscale import progress

FINISHED = re.compile(r"^(?:\[rank 0\] )?\[(\d+)/(\d+)\] (.+)$", re.M)  # launched workers' lines carry torchrun's prefix


def finished_settings(stderr: str) -> list[tuple[int, int, str]]:
    return [(int(done), int(total), label) for done, total, label in FINISHED.findall(stderr)]


def assert_one_line_per_setting(done, settings: int) -> list[str]:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\x1b[" not in done.stderr, "ANSI codes off a terminal"
    lines = finished_settings(done.stderr)
    assert [(n, total) for n, total, _ in lines] == [(n, settings) for n in range(1, settings + 1)], done.stderr
    return [label for _, _, label in lines]


def test_bench_train_tune_prints_a_line_per_setting(tmp_path):
    done = run_cli(["bench", "train", "--model", "mlp", "--batch-size", "16", "--steps", "2", "--repeats", "1",
                    "--warmup", "0", "--tune", "--precision", "fp32", "--no-compile", "--run-dir", "t"], cwd=tmp_path)
    labels = assert_one_line_per_setting(done, 2)
    assert labels[0].startswith("batch 8, fp32, eager: ") and "samples/s" in labels[0]


def test_bench_infer_prints_a_line_per_setting(tmp_path):
    done = run_cli(["bench", "infer", "--model", "mlp", "--batch-sizes", "1,4", "--precisions", "fp32",
                    "--repeats", "1", "--warmup", "1", "--run-dir", "i"], cwd=tmp_path)
    labels = assert_one_line_per_setting(done, 2)
    assert labels[1].startswith("fp32 eager batch 4")


@pytest.mark.parametrize("nproc", [1, 2])
def test_bench_comm_prints_a_line_per_size(tmp_path, nproc):
    done = run_cli(["bench", "comm", "--nproc", str(nproc), "--sizes", "1K,4K", "--ops", "all_reduce,broadcast",
                    "--iters", "2", "--warmup", "1", "--device", "cpu", "--run-dir", "c"], cwd=tmp_path)
    labels = assert_one_line_per_setting(done, 4)
    assert labels[0].startswith("all_reduce 1 KiB: ") and "GB/s busbw" in labels[0]


def test_train_logs_interval_lines_with_the_step(tmp_path):
    done = run_cli(["train", "--model", "mlp", "--max-steps", "40", "--log-every", "5", "--run-dir", "r"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\x1b[" not in done.stderr
    steps = re.findall(r"^step (\d+)/40  epoch \d+/\d+  loss [\d.]+", done.stderr, re.M)
    assert steps, done.stderr  # the first interval always; then at most one line per 10 s


def test_a_long_setting_says_it_is_still_running(monkeypatch):
    """Off a terminal nothing else shows that a slow setting is alive: a line every LINE_EVERY_S."""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    console = Console(file=io.StringIO(), width=200)
    with progress.SweepProgress(console, total=2) as sweep:
        sweep.start("batch 64, fp32, eager")
        time.sleep(1.5)
        sweep.finish("12 samples/s")
    text = console.file.getvalue()
    assert re.search(r"^\.\.\. \[1/2\] batch 64, fp32, eager: running for \d+ s$", text, re.M), text
    assert re.search(r"^\[1/2\] batch 64, fp32, eager: 12 samples/s \(\d+\.\d s; eta \d:\d\d\)$", text, re.M), text


def test_train_interval_lines_are_at_most_one_per_interval_off_a_terminal():
    console = Console(file=io.StringIO(), width=200)
    train = progress.TrainProgress(console)
    train.start(total_steps=100, done_steps=0)
    for step in (10, 20, 30):
        train.interval(step, 0, 2, 1.5, 640.0, "samples")
    lines = console.file.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("step 10/100  epoch 1/2  loss 1.5000  640 samples/s  eta ")
