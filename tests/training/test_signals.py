"""Signals save the work: real processes, real signals, and the resumed run's loss against
an uninterrupted one."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import last_json, run_cli
from dlscale.runs.metrics_log import read_metrics

# fixed settings: separate runs are compared; no periodic checkpoint, so whatever is
# saved was saved because of the signal
# ONE_STEPS and TWO_STEPS: enough that a run still trains when the signal comes (after step 5, 20)
ONE_STEPS, TWO_STEPS = 500, 150
ONE = ["train", "--model", "mlp", "--data", "synthetic:3x16x16", "--max-steps", str(ONE_STEPS), "--seed", "5",
       "--precision", "fp32"]
TWO = ["train", "--model", "mlp", "--data", "synthetic:3x16x16", "--max-steps", str(TWO_STEPS), "--seed", "2", "--nproc", "2",
       "--precision", "fp32", "--log-every", "1"]

pytestmark = pytest.mark.slow


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlscale", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Until metrics.jsonl has logged ``step`` (the loop is running)."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "timed out waiting for the run to train"
        try:
            if any(r.get("step", 0) >= step for r in read_metrics(run_dir / "metrics.jsonl")):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def _saved_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def test_sigterm_saves_and_the_resumed_run_ends_with_the_uninterrupted_loss(tmp_path):
    whole = run_cli([*ONE, "--run-dir", "whole", "--json", "--log-every", "1"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    expected = last_json(whole.stdout)

    proc = _start([*ONE, "--run-dir", "cut", "--log-every", "1"], cwd=tmp_path)
    _wait_for_step(tmp_path / "cut", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("dlscale: stopped by SIGTERM after step") and "dlscale train --resume cut" in last
    assert "Traceback" not in err
    (saved,) = _saved_steps(tmp_path / "cut")
    assert 5 <= saved < ONE_STEPS and f"after step {saved} of {ONE_STEPS}" in last
    assert not (tmp_path / "cut" / "summary.json").exists()

    resumed = run_cli(["train", "--resume", "auto", "--run-dir", "cut", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    got = last_json(resumed.stdout)
    assert got["final_loss"] == expected["final_loss"] and got["test_loss"] == expected["test_loss"]
    assert got["steps"] == ONE_STEPS


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1])
def test_sigint_and_sigusr1_also_save_and_say_how_to_resume(tmp_path, signum):
    proc = _start([*ONE, "--run-dir", "cut", "--log-every", "1"], cwd=tmp_path)
    _wait_for_step(tmp_path / "cut", 3, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1].startswith(f"dlscale: stopped by {name} after step")
    assert len(_saved_steps(tmp_path / "cut")) == 1


def test_a_second_sigint_exits_at_once_without_saving(tmp_path):
    # long steps (a large batch of resnet18), so the second Ctrl-C comes before the first step ends
    args = ["train", "--model", "resnet18", "--data", "synthetic:3x64x64", "--batch-size", "128", "--max-steps", "50",
            "--precision", "fp32", "--no-channels-last", "--log-every", "1", "--run-dir", "cut"]
    proc = subprocess.Popen([sys.executable, "-m", "dlscale", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, heard = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if "SIGINT received" in line:
                heard.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    _wait_for_step(tmp_path / "cut", 1, proc)
    proc.send_signal(signal.SIGINT)
    # the second only once the first was handled: two signals that arrive while one long
    # operation runs reach Python's handler as one
    assert heard.wait(60), "".join(lines)[-3000:]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(10)
    err = "".join(lines)
    assert "dlscale: SIGINT received: saving a checkpoint after this step, then stopping; Ctrl-C again stops at once" in err
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "interrupted twice" in err.strip().splitlines()[-1]
    assert _saved_steps(tmp_path / "cut") == []


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_a_launcher_stops_every_worker_at_one_step_and_resumes_exactly(tmp_path):
    whole = run_cli([*TWO, "--run-dir", "whole", "--json"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = last_json(whole.stdout)

    proc = _start([*TWO, "--run-dir", "cut"], cwd=tmp_path)
    _wait_for_step(tmp_path / "cut", 20, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("dlscale: stopped by SIGTERM after step"), err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err
    (saved,) = _saved_steps(tmp_path / "cut")
    logs = [p.read_text() for p in (tmp_path / "cut" / "logs").rglob("stderr.log")]
    assert len(logs) == 2 and all(f"after step {saved} of {TWO_STEPS}" in log for log in logs)  # both workers, one step

    resumed = run_cli(["train", "--resume", "cut", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = last_json(resumed.stdout)
    assert abs(got["final_loss"] - expected["final_loss"]) <= 1e-6 * abs(expected["final_loss"])
    assert got["steps"] == TWO_STEPS


def test_workers_of_a_killed_launcher_save_and_stop_instead_of_training_on(tmp_path):
    proc = _start([*TWO, "--run-dir", "orphans"], cwd=tmp_path)
    _wait_for_step(tmp_path / "orphans", 10, proc)
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers trained on after their launcher was killed"
        time.sleep(0.1)
    assert len(_saved_steps(tmp_path / "orphans")) == 1  # they saved on the way out
    assert not (tmp_path / "orphans" / "summary.json").exists()


def test_sigusr1_to_a_launcher_is_passed_on_and_its_workers_save(tmp_path):
    """SLURM's `--signal=USR1@60` reaches the launcher; the elastic agent alone would not pass it on."""
    proc = _start([*TWO, "--run-dir", "cut"], cwd=tmp_path)
    _wait_for_step(tmp_path / "cut", 10, proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("dlscale: stopped by SIGUSR1 after step")
    assert len(_saved_steps(tmp_path / "cut")) == 1


def test_a_worker_that_saved_and_is_stopping_outlives_the_agents_sigterm():
    """Workers leave a moment apart; torchrun's agent then sends SIGTERM to those still leaving,
    which must not turn their clean stop (exit 128 + signal) into a kill."""
    code = ("import os, signal, time; from dlscale.training.signals import stop_quietly_under_launcher; "
            "stop_quietly_under_launcher(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); print('left cleanly')")
    under = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "DLSCALE_LAUNCHER_PID": str(os.getpid())})
    assert under.returncode == 0 and "left cleanly" in under.stdout, under.stderr
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "DLSCALE_LAUNCHER_PID"})
    assert alone.returncode == -signal.SIGTERM  # a process of the user's own (dlscale.fit) keeps its handlers
