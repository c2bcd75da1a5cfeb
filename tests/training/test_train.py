"""End-to-end behaviour of the trainer through the real command."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import last_json, run_cli
from dlscale.runs.metrics_log import read_metrics
from dlscale.runs.results import SUMMARY_KEYS

# settings fixed: two separate runs are compared, and the CPU probe's choice is not the point here;
# 512 samples: 8 steps per epoch, so 20 steps cross two epoch ends (validation) and end mid-epoch
SLOW_RUN = ["--data", "synthetic:3x32x32", "--synthetic-samples", "512", "--max-steps", "20", "--checkpoint-every", "4",
            "--seed", "3", "--precision", "fp32", "--no-channels-last"]


def test_default_train_reaches_97_percent_on_digits_and_writes_the_run_directory(tmp_path):
    done = run_cli(["train", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["model"] == "cnn" and summary["data"] == "digits"
    assert summary["test_accuracy"] >= 0.97
    run_dir = tmp_path / summary["run_dir"]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for name in ("config.toml", "metrics.jsonl", "hardware.json", "checkpoints/latest/.metadata", "checkpoints/latest/extra-rank0.pt"):
        assert (run_dir / name).exists(), name
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "val"] == list(range(10))
    assert summary["flops_per_sample"] > 0 and summary["total_flops"] == summary["flops_per_sample"] * 64 * summary["steps"]
    assert "epoch 10/10" in done.stderr and "test accuracy" in done.stderr
    # the measurements of every run: CPU MFU is against the measured GEMM peak, recorded in hardware.json
    hardware = json.loads((run_dir / "hardware.json").read_text())
    # the precision left on auto is the one measured fastest here; MFU is against its GEMM peak
    assert summary["precision"] in ("fp32", "bf16") and summary["auto_settings"]["precision"] == summary["precision"]
    gemm = hardware["measured_peaks"]["devices"]["cpu"]["gemm_flops_per_second"][summary["precision"]]
    assert summary["peak_flops_per_second"] == gemm and "measured" in summary["peak_source"]
    assert summary["mfu"] == pytest.approx(summary["achieved_flops_per_second"] / gemm)
    assert summary["achieved_flops_per_second"] == pytest.approx(summary["flops_per_sample"] * summary["samples_per_second"])
    assert summary["mfu_datasheet"] is None and 0 <= summary["data_wait_fraction"] < 1
    assert summary["peak_memory_bytes"] > 0 and summary["warmup_seconds"] > 0
    assert summary["energy_kwh"] is None  # no GPU power readings on a CPU


def test_config_file_of_a_run_reproduces_it(tmp_path):
    first = run_cli(["train", "--model", "mlp", "--max-steps", "30", "--lr", "0.003", "--run-dir", "a", "--json"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli(["train", "--config", "a/config.toml", "--run-dir", "b", "--json"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    a, b = last_json(first.stdout), last_json(again.stdout)
    assert (a["final_loss"], a["test_loss"], a["steps"]) == (b["final_loss"], b["test_loss"], b["steps"])
    assert (tmp_path / "a/config.toml").read_text() == (tmp_path / "b/config.toml").read_text()


def _kill_once_checkpointed(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / f"step-{step}").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_run_killed_mid_training_resumes_to_exactly_the_same_loss(tmp_path):
    whole = run_cli(["train", *SLOW_RUN, "--run-dir", "whole", "--json"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    expected = last_json(whole.stdout)

    proc = subprocess.Popen(
        [sys.executable, "-m", "dlscale", "train", *SLOW_RUN, "--run-dir", "killed"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _kill_once_checkpointed(proc, tmp_path / "killed", 12)  # mid-epoch: 8 steps per epoch
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "summary.json").exists()

    resumed = run_cli(["train", "--resume", "killed", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    got = last_json(resumed.stdout)
    assert "resuming at step" in resumed.stderr
    assert got["final_loss"] == expected["final_loss"]
    assert got["test_loss"] == expected["test_loss"] and got["steps"] == 20
    steps = [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 20  # no step logged twice


def test_resume_auto_finds_the_unfinished_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlscale", "train", *SLOW_RUN], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("runs/*/checkpoints/step-8")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    (killed,) = (tmp_path / "runs").iterdir()
    resumed = run_cli(["train", *SLOW_RUN, "--resume", "auto", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert Path(last_json(resumed.stdout)["run_dir"]).name == killed.name
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    done = run_cli(
        ["train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1e30", "--warmup-steps", "0",
         "--max-steps", "60", "--checkpoint-every", "1", "--keep-checkpoints", "0", "--log-every", "1", "--run-dir", "r"],
        cwd=tmp_path,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: loss became") and "at step" in line and "Traceback" not in done.stderr
    bad_step = int(line.split("at step ")[1].split(";")[0])
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "r/checkpoints").glob("step-*"))
    assert checkpoints and max(checkpoints) == bad_step - 1
    assert not (tmp_path / "r/summary.json").exists()


def test_target_accuracy_records_time_and_step(tmp_path):
    done = run_cli(["train", "--epochs", "3", "--target-accuracy", "0.5", "--json"], cwd=tmp_path)
    summary = last_json(done.stdout)
    assert summary["time_to_target_seconds"] > 0 and summary["time_to_target_step"] in (19, 38, 57)


def test_language_model_on_a_text_file_reports_tokens(tmp_path):
    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    done = run_cli(["train", "--model", "gpt-tiny", "--data", "book.txt", "--max-steps", "12", "--batch-size", "8", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["seq_len"] == 64 and summary["tokens_per_second"] == pytest.approx(summary["samples_per_second"] * 64)
    assert summary["test_loss"] is not None and 0 <= summary["test_accuracy"] <= 1


def test_bf16_and_grad_accum_and_sgd_run_on_cpu(tmp_path):
    done = run_cli(["train", "--model", "mlp", "--precision", "bf16", "--grad-accum", "4", "--optimizer", "sgd",
                    "--grad-clip", "1.0", "--max-steps", "20", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["precision"] == "bf16" and summary["steps"] == 20


def test_compile_on_cpu_keeps_its_warm_up_apart(tmp_path):
    done = run_cli(["train", "--model", "mlp", "--compile", "--max-steps", "12", "--run-dir", "r", "--json"], cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert "compile = true" in (tmp_path / "r/config.toml").read_text()
    # compilation happens in the first steps: they are warm-up, reported apart from the timed steps
    assert summary["warmup_seconds"] > summary["train_seconds"] - summary["warmup_seconds"]


def test_resuming_from_a_tampered_checkpoint_is_one_error_line_and_runs_nothing(tmp_path):
    import os
    import pickle

    done = run_cli(["train", "--model", "mlp", "--max-steps", "10", "--checkpoint-every", "5", "--run-dir", "r"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "r" / "summary.json").unlink()  # as if the run had died after its last checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (tmp_path / "r" / "checkpoints" / "step-10" / ".metadata").write_bytes(pickle.dumps(Evil()))
    resumed = run_cli(["train", "--resume", "r"], cwd=tmp_path)
    assert resumed.returncode == 2
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint r/checkpoints/step-10 cannot be read")
    assert "posix.system" in lines[0] and not (tmp_path / "pwned").exists()


def test_settings_left_open_on_cpu_are_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import dlscale
    from dlscale.hardware import contention

    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(contention, "machine_busy", lambda: False)  # else a busy-then-quiet machine re-measures
    first = dlscale.fit("cnn", "digits", max_steps=4, run_dir=str(tmp_path / "a"), verbose=False).summary
    tuned = first["auto_settings"]
    # every variant, but bf16+channels_last where bf16's warm-up was hopeless on this CPU (training/autotune)
    assert {"fp32", "fp32+channels_last", "bf16"} <= set(tuned["step_ms"]) <= {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert not tuned["cached"]
    assert (first["precision"], first["channels_last"]) == (tuned["precision"], tuned["channels_last"])
    config = (tmp_path / "a" / "config.toml").read_text()
    assert f'precision = "{tuned["precision"]}"' in config and f"channels_last = {str(tuned['channels_last']).lower()}" in config

    again = dlscale.fit("cnn", "digits", max_steps=4, run_dir=str(tmp_path / "b"), verbose=False).summary
    assert again["auto_settings"] == {**tuned, "cached": True}

    # settings given by the user are kept and nothing is measured
    fixed = dlscale.fit("cnn", "digits", max_steps=4, run_dir=str(tmp_path / "c"), verbose=False,
                        precision="fp32", channels_last=False).summary
    assert fixed["auto_settings"] is None and (fixed["precision"], fixed["channels_last"]) == ("fp32", False)
    # a language model has no memory format to choose: only the precisions are timed
    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    lm = dlscale.fit("gpt-tiny", str(tmp_path / "book.txt"), max_steps=2, batch_size=8, run_dir=str(tmp_path / "d"),
                     verbose=False).summary
    assert set(lm["auto_settings"]["step_ms"]) == {"fp32", "bf16"} and lm["channels_last"] is False


# --------------------------------------------------------------------------- one writer, resume, failures


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlscale", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_metrics(run_dir: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


LONG_RUN = ["train", "--data", "synthetic:3x32x32", "--max-steps", "400", "--log-every", "1", "--precision", "fp32",
            "--no-channels-last"]


def test_a_second_writer_of_a_run_directory_is_refused_while_the_first_trains(tmp_path):
    import socket

    first = _popen([*LONG_RUN, "--run-dir", "r"], cwd=tmp_path)
    try:
        _wait_for_metrics(tmp_path / "r", first)
        seconds = [_popen(args, cwd=tmp_path) for args in (  # started together: none of them may take the lock
            ["train", "--max-steps", "2", "--run-dir", "r"], ["train", "--resume", "r"], ["train", "--resume", "auto", "--run-dir", "r"])]
        for second in seconds:
            _, err = second.communicate(timeout=240)
            assert second.returncode == 2, err
            assert err.strip().splitlines() == [
                f"error: run r is in use by process {first.pid} on host {socket.gethostname()}; "
                "wait for it to end, or give another --run-dir"
            ]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM  # the first run was not disturbed: it saved on SIGTERM


def test_three_runs_started_in_the_same_second_write_three_run_directories(tmp_path):
    procs = [_popen(["train", "--model", "mlp", "--max-steps", "3", "--json"], cwd=tmp_path) for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    dirs = {last_json(out)["run_dir"] for out, _ in outs}
    assert len(dirs) == 3
    for run in dirs:
        steps = [r["step"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "train"]
        assert steps == sorted(set(steps)) and steps[-1] == 3  # no interleaved lines


def test_concurrent_resumes_of_one_run_train_it_once(tmp_path):
    base = ["train", "--model", "mlp", "--max-steps", "200", "--checkpoint-every", "5", "--log-every", "1"]
    proc = _popen([*base, "--run-dir", "r"], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "r/checkpoints/step-5").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    resumers = [_popen(["train", "--resume", "r"], cwd=tmp_path) for _ in range(3)]
    results = [(p, p.communicate(timeout=240)[1]) for p in resumers]
    assert sum(p.returncode == 0 for p, _ in results) == 1, [err[-400:] for _, err in results]
    for p, err in results:
        if p.returncode:
            assert p.returncode == 2 and ("is in use by process" in err or "has already finished" in err), err[-800:]
    steps = [r["step"] for r in read_metrics(tmp_path / "r/metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 200


def test_a_fresh_run_that_fails_before_a_checkpoint_can_be_rerun_with_the_same_run_dir(tmp_path):
    diverging = ["train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1e30", "--warmup-steps", "0",
                 "--max-steps", "20", "--log-every", "1", "--run-dir", "r"]
    failed = run_cli(diverging, cwd=tmp_path)
    assert failed.returncode == 2 and "loss became" in failed.stderr
    assert not (tmp_path / "r").exists()  # created by the run, removed with it
    fixed = run_cli(["train", "--model", "mlp", "--max-steps", "3", "--run-dir", "r"], cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-2000:]


def test_resume_auto_continues_the_newest_unfinished_run_whatever_its_model(tmp_path):
    proc = _popen(["train", "--model", "gpt-tiny", "--data", "synthetic", "--max-steps", "40", "--log-every", "1",
                   "--precision", "fp32"], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/metrics.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    (interrupted,) = (tmp_path / "runs").iterdir()
    resumed = run_cli(["train", "--resume", "auto", "--max-steps", "40", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"continuing runs/{interrupted.name}" in resumed.stderr
    assert last_json(resumed.stdout)["model"] == "gpt-tiny"
    again = run_cli(["train", "--resume", "auto", "--max-steps", "2", "--precision", "fp32", "--no-channels-last"], cwd=tmp_path)
    assert again.returncode == 0 and "no unfinished run with a checkpoint under runs/; starting a new run" in again.stderr


def test_a_flag_that_would_change_a_resumed_run_is_refused_naming_it(tmp_path):
    proc = _popen(["train", "--model", "mlp", "--max-steps", "300", "--log-every", "1", "--run-dir", "r"], cwd=tmp_path)
    _wait_for_metrics(tmp_path / "r", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    before = (tmp_path / "r/config.toml").read_text()
    refused = run_cli(["train", "--resume", "r", "--lr", "0.5"], cwd=tmp_path)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: --lr 0.5 would change run r") and "--config r/config.toml --lr 0.5" in line
    assert (tmp_path / "r/config.toml").read_text() == before
    same = run_cli(["train", "--resume", "r", "--model", "mlp", "--checkpoint-every", "50", "--json"], cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-2000:]  # the same value, and a flag that only says how to run


def test_the_typed_summary_starts_with_the_keys_every_run_has_in_their_order():
    from dataclasses import fields

    from dlscale.training.summary import RunSummary

    names = [f.name for f in fields(RunSummary)]
    assert names[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert len(names) == len(set(names))


def test_checkpoints_carry_the_totals_under_the_names_older_runs_resume_with():
    import torch

    from dlscale.training.state import EarlierSessions, TrainState
    from dlscale.training.timing import StepTimer

    totals = {"warmup_seconds", "timed_seconds", "timed_samples", "timed_data_seconds", "loop_seconds", "wall_seconds"}
    fresh = TrainState.begin(0, EarlierSessions(), StepTimer(torch.device("cpu"), 2), time.perf_counter())
    assert set(fresh.carried()) == totals
    saved = {"warmup_seconds": 1.0, "timed_seconds": 2.0, "timed_samples": 64, "timed_data_seconds": 0.5,
             "loop_seconds": 3.0, "wall_seconds": 4.0, "time_to_target_seconds": 2.5, "time_to_target_step": 7}
    earlier = EarlierSessions.from_checkpoint(saved)
    assert (earlier.wall_seconds, earlier.loop_seconds, earlier.timed_samples) == (4.0, 3.0, 64)
    resumed = TrainState.begin(10, earlier, StepTimer(torch.device("cpu"), 12), time.perf_counter())
    carried = resumed.carried()
    assert set(carried) == totals | {"wall_seconds_before", "time_to_target_seconds", "time_to_target_step"}
    assert carried["wall_seconds"] >= 4.0 and carried["loop_seconds"] >= 3.0 and carried["time_to_target_step"] == 7
