"""Several real worker processes on this CPU: Gloo through torchrun's elastic agent."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from conftest import last_json, run_cli
from dlscale.runs.metrics_log import read_metrics

# Precision fixed: the CPU settings probe may choose differently for another per-worker
# batch, and these tests compare the losses of separate runs.
MLP = ["train", "--model", "mlp", "--max-steps", "20", "--seed", "1", "--precision", "fp32"]


def summary_of(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return last_json(done.stdout)


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * abs(b)


@pytest.fixture(scope="module")
def mlp_one(tmp_path_factory) -> dict:
    """The summary of MLP in one process: the loss several tests compare their workers with.
    Shared by the module, so it is trained once."""
    return summary_of(run_cli([*MLP, "--run-dir", "one", "--json"], cwd=tmp_path_factory.mktemp("mlp-one")))


@pytest.fixture(scope="module")
def mlp_two(tmp_path_factory) -> tuple[dict, Path]:
    """The summary and run directory of MLP on two workers (DDP), trained once for the module."""
    where = tmp_path_factory.mktemp("mlp-two")
    return summary_of(run_cli([*MLP, "--nproc", "2", "--run-dir", "two", "--json"], cwd=where)), where / "two"


def test_two_workers_end_with_the_loss_of_one(mlp_one, mlp_two):
    one = mlp_one
    two, two_dir = mlp_two
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert close(two["final_loss"], one["final_loss"]) and close(two["test_loss"], one["test_loss"])
    assert two["test_accuracy"] == one["test_accuracy"]  # every test sample counted once
    logs = list((two_dir / "logs").rglob("stderr.log"))
    assert len(logs) == 2  # each worker's own log file
    assert 'nproc = 2' in (two_dir / "config.toml").read_text()


def test_fsdp_trains_like_ddp(tmp_path, mlp_two):
    ddp = mlp_two[0]  # MLP on two workers with the default strategy, ddp
    fsdp = summary_of(run_cli([*MLP, "--nproc", "2", "--strategy", "fsdp", "--run-dir", "fsdp", "--json"], cwd=tmp_path))
    assert close(fsdp["final_loss"], ddp["final_loss"]) and fsdp["test_accuracy"] == ddp["test_accuracy"]
    # the shards are gathered into one portable model.safetensors, which reproduces the run's test loss
    import dlscale

    loaded = dlscale.load(tmp_path / "fsdp", device="cpu", precision="fp32")
    assert close(loaded.evaluate("digits")["loss"], fsdp["test_loss"])


def test_torchrun_runs_the_worker_without_launching_again(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "dlscale", *MLP, "--run-dir", "tr", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    summary = summary_of(done)
    assert summary["world_size"] == 2 and not (tmp_path / "tr" / "logs").exists()


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory) -> tuple[dict, Path]:
    """A finished run of two workers with a checkpoint at step 10 and 20: its summary and
    directory. Trained once; each case below resumes a copy of it."""
    args = ["train", "--model", "mlp", "--max-steps", "20", "--batch-size", "96", "--checkpoint-every", "10",
            "--keep-checkpoints", "0", "--seed", "2", "--precision", "fp32"]
    where = tmp_path_factory.mktemp("two-worker-run")
    return summary_of(run_cli([*args, "--nproc", "2", "--run-dir", "whole", "--json"], cwd=where)), where / "whole"


@pytest.mark.parametrize("workers", [1, 3])
def test_a_checkpoint_of_two_workers_resumes_with_another_number(tmp_path, workers, two_worker_run):
    whole, whole_dir = two_worker_run
    # make an interrupted copy: as if the run had died after step 10
    shutil.copytree(whole_dir, tmp_path / "cut", symlinks=True)
    (tmp_path / "cut" / "summary.json").unlink()
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-20")
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    resumed = summary_of(run_cli(["train", "--resume", "cut", "--nproc", str(workers), "--json"], cwd=tmp_path))
    assert resumed["world_size"] == workers and resumed["steps"] == 20
    assert close(resumed["final_loss"], whole["final_loss"])
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps))


def test_a_batch_that_does_not_split_over_the_workers_is_refused(tmp_path):
    done = run_cli(["train", "--model", "mlp", "--nproc", "3", "--batch-size", "64"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --batch-size 64 (the global batch) does not split evenly over 3")


def _workers_of(run_dir: Path) -> list[int]:
    """PIDs of the worker processes training in run_dir (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--resume" in argv and str(run_dir).encode() in argv:
                found.append(int(entry.name))
    return sorted(found)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlscale", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


SLOW = ["train", "--data", "synthetic:3x32x32", "--max-steps", "24", "--checkpoint-every", "8", "--seed", "4", "--nproc", "2",
        "--precision", "fp32", "--no-channels-last"]


def test_a_killed_worker_is_restarted_and_the_job_ends_with_the_uninterrupted_loss(tmp_path):
    whole = summary_of(run_cli([*SLOW, "--run-dir", "whole", "--json"], cwd=tmp_path))
    proc = _start([*SLOW, "--max-restarts", "1", "--run-dir", "killed", "--json"], cwd=tmp_path)
    run_dir = tmp_path / "killed"
    _wait_for(lambda: (run_dir / "checkpoints" / "step-8").exists())
    victim = _workers_of(Path("killed"))[-1]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    got = last_json(out)
    assert close(got["final_loss"], whole["final_loss"]) and got["steps"] == 24
    assert len({p.parent.parent.name for p in (run_dir / "logs").rglob("stderr.log")}) == 2  # attempt_0 and attempt_1


def test_a_frozen_worker_ends_the_job_with_a_timeout_error(tmp_path):
    proc = _start([*SLOW, "--timeout", "8", "--run-dir", "frozen"], cwd=tmp_path)
    run_dir = tmp_path / "frozen"
    _wait_for(lambda: (run_dir / "checkpoints" / "step-8").exists())
    workers = _workers_of(Path("frozen"))
    victim = workers[-1]
    os.kill(victim, signal.SIGSTOP)
    try:
        # once the healthy worker has timed out and left, the agent gives the stopped one 30 s
        # to save (SIGTERM waits while it is stopped) before its SIGKILL: not this test's subject
        _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers[:-1]))
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: worker rank") and ("timed out" in last or "collective" in last), err[-2000:]


def _disagreeing_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from dlscale.distributed import process_group as dl_dist
    from dlscale.errors import UserError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dl_dist.check_agreement("the resolved configuration (hash of config.toml)", ["abc", "abd"][rank])
        outcome = "agreed"
    except UserError as exc:
        outcome = str(exc)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}").write_text(outcome)


def test_workers_that_disagree_on_the_config_stop_with_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_disagreeing_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        text = (tmp_path / f"rank{rank}").read_text()
        assert text.startswith("the workers disagree on the resolved configuration") and "'abd'" in text


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed (apt-get install openmpi-bin)")
def test_mpirun_starts_the_same_training(tmp_path, mlp_one):
    one = mlp_one
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    done = subprocess.run(
        ["mpirun", *root, "-np", "2", "--bind-to", "none", sys.executable, "-m", "dlscale", *MLP, "--run-dir", "mpi", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    two = summary_of(done)
    assert two["world_size"] == 2 and close(two["final_loss"], one["final_loss"])
    assert sum(line.startswith("{") for line in done.stdout.splitlines()) == 1  # rank 0 alone prints --json


def test_gradient_accumulation_on_two_workers_keeps_the_global_batch(tmp_path, mlp_one):
    one = mlp_one
    two = summary_of(run_cli([*MLP, "--nproc", "2", "--grad-accum", "2", "--run-dir", "acc", "--json"], cwd=tmp_path))
    assert two["global_batch_size"] == 64 and close(two["final_loss"], one["final_loss"])


def test_scale_lr_applies_the_linear_scaling_rule_and_records_it(tmp_path):
    summary = summary_of(run_cli(["train", "--model", "mlp", "--max-steps", "5", "--batch-size", "128", "--lr", "0.1",
                                  "--optimizer", "sgd", "--scale-lr", "--run-dir", "s", "--json"], cwd=tmp_path))
    assert summary["lr"] == pytest.approx(0.05) and summary["scale_lr"] is True
    config = (tmp_path / "s" / "config.toml").read_text()
    assert "scale_lr = true" in config and "lr = 0.1\n" in config  # re-running the file scales once, again
