"""Several nodes, played by several launchers on this host: they meet (c10d and static
rendezvous) and train exactly what one launcher with the same number of workers trains;
a node that never comes, dies or freezes ends the others with one `error:` line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import last_json, run_cli

pytestmark = pytest.mark.slow

TRAIN = ["train", "--model", "cnn", "--data", "digits", "--batch-size", "32", "--seed", "0", "--precision", "fp32",
         "--no-channels-last", "--no-compile"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """One node's launcher. torchrun gives each worker one thread when a node runs several
    (OMP_NUM_THREADS=1), so the one-launcher run's workers have one; these get the same, as
    kernels with another thread count add in another order (losses then differ in the 6th digit)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dlscale", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(node: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = node.communicate(timeout=timeout)
    return node.returncode, out, err


@pytest.fixture
def one_launcher_loss(nproc2_loss) -> float:
    """The loss of the same run started by one launcher with two workers (tests/conftest.py)."""
    return nproc2_loss


def test_two_nodes_meet_through_c10d_and_train_as_one_launcher_does(tmp_path, one_launcher_loss):
    """Each node names the shared run folder by its own path (here: one through a link), as
    nodes that mount the file system in different places do; they must still meet."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "mounted-elsewhere").symlink_to(tmp_path / "shared")
    meet = ["--max-steps", "20", "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            "--timeout", "60", "--json"]
    first = start([*TRAIN, *meet, "--run-dir", str(tmp_path / "shared" / "run")], tmp_path)
    time.sleep(1)  # the first node's launcher writes config.toml; the second joins it
    second = start([*TRAIN, *meet, "--run-dir", str(tmp_path / "mounted-elsewhere" / "run")], tmp_path)
    results = [finish(first), finish(second)]
    for code, out, err in results:
        assert code == 0, err[-2000:]
        assert last_json(out)["final_loss"] == one_launcher_loss
        assert last_json(out)["world_size"] == 2
    agents = sorted((tmp_path / "shared" / "run" / "logs").iterdir())
    assert len(agents) == 2  # each node's agent kept its own workers' logs
    assert all(list(agent.rglob("stderr.log")) and list(agent.rglob("stdout.log")) for agent in agents)
    assert any("step" in log.read_text() for log in (tmp_path / "shared" / "run" / "logs").rglob("stderr.log"))


def test_two_nodes_meet_through_a_static_rendezvous_under_a_given_id(tmp_path, one_launcher_loss):
    """--rdzv-id, as torchrun's: the id the nodes meet under, when the user gives one."""
    meet = ["--max-steps", "20", "--nnodes", "2", "--nproc", "1", "--rdzv-id", "job-42", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), "--run-dir", str(tmp_path / "run"), "--timeout", "60", "--json"]
    second = start([*TRAIN, *meet, "--node-rank", "1"], tmp_path)
    first = start([*TRAIN, *meet, "--node-rank", "0"], tmp_path)
    for code, out, err in (finish(first), finish(second)):
        assert code == 0, err[-2000:]
        assert last_json(out)["final_loss"] == one_launcher_loss


def test_a_node_that_never_comes_ends_the_other_after_the_timeout(tmp_path):
    done = run_cli([*TRAIN, "--max-steps", "20", "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint",
                    f"127.0.0.1:{free_port()}", "--run-dir", str(tmp_path / "run"), "--timeout", "5"], cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "did not all join within --timeout 5 s" in errors[0]
    assert "Traceback" not in done.stderr


def _two_nodes_training(tmp_path: Path, timeout_s: int) -> tuple[subprocess.Popen, subprocess.Popen]:
    meet = ["--max-steps", "5000", "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            "--run-dir", str(tmp_path / "run"), "--timeout", str(timeout_s)]
    first = start([*TRAIN, *meet], tmp_path)
    time.sleep(1)
    second = start([*TRAIN, *meet], tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().strip()):  # both nodes are training
        assert time.monotonic() < deadline, "the nodes never started training"
        assert first.poll() is None and second.poll() is None, (first.stderr.read(), second.stderr.read())
        time.sleep(0.5)
    return first, second


def _worker_of(launcher: subprocess.Popen) -> int:
    found = subprocess.run(["pgrep", "-P", str(launcher.pid), "-f", "dlscale train --resume"],
                           capture_output=True, text=True)
    return int(found.stdout.split()[0])


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_lost_node_ends_the_other_with_one_error_line(tmp_path, how):
    """A node that dies (launcher and worker killed at once) or freezes (both stopped): the
    other node's workers fail their collective within --timeout, and the launcher says so in
    one line, with the --timeout its workers really used."""
    first, second = _two_nodes_training(tmp_path, timeout_s=5)
    lost = [_worker_of(second), second.pid]
    for pid in lost:
        os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    try:
        code, _out, err = finish(first, timeout=120)
    finally:
        for pid in lost:
            with_kill = [signal.SIGKILL] if how == "killed" else [signal.SIGKILL, signal.SIGCONT]
            for sig in with_kill:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        second.wait(timeout=30)
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    assert "--timeout 5 s" in errors[0] and "another worker froze or died" in errors[0]
    assert "Traceback" not in err
