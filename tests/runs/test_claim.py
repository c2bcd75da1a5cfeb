import os
import socket
import subprocess
import sys

import pytest
import torch

from dlscale.runs import claim as runs
from dlscale.errors import UserError


def _holder(path) -> subprocess.Popen:
    """Another process that claims ``path`` and keeps it until killed."""
    code = (
        "import sys, time; from pathlib import Path; from dlscale.runs import claim as runs; "
        f"runs.claim(Path({str(path)!r})); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_claimed_run_is_refused_naming_the_process_and_host(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=f"in use by process {holder.pid} on host {socket.gethostname()}"):
            runs.claim(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    runs.claim(tmp_path)  # the lock died with its process: no stale lock to clean
    runs.release(tmp_path)


def test_claim_new_checks_for_a_run_only_under_the_claim(tmp_path):
    target = tmp_path / "r"
    runs.claim_new(target)
    (target / "config.toml").write_text("")
    runs.release(target)
    with pytest.raises(UserError, match="already holds a run"):
        runs.claim_new(target)


def test_a_failed_fresh_run_leaves_nothing_but_a_resumable_one_is_kept(tmp_path):
    from dlscale.runs import checkpoint

    fresh = runs.claim_fresh("cnn-digits", tmp_path)
    (fresh / "config.toml").write_text("")
    assert runs.abandon(fresh) and not fresh.exists()

    given = tmp_path / "given"
    runs.claim_new(given)
    (given / "config.toml").write_text("")
    checkpoint.save(given, 1, {"x": torch.ones(1)}, {"step": 1}, {}, keep=0)
    assert not runs.abandon(given) and (given / "config.toml").exists()


def test_a_lock_that_is_a_symbolic_link_or_a_fifo_is_refused_and_nothing_is_written(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        runs.claim(run)
    assert victim.read_text() == "the user's file"
    (run / ".lock").unlink()
    os.mkfifo(run / ".lock")
    with pytest.raises(UserError, match="not a plain file"):
        runs.claim(run)
    (run / "config.toml").write_text("")
    with pytest.raises(UserError, match="not a plain file"):  # asking who holds it must not block either
        runs.refuse_if_in_use(run)


def test_a_failed_run_in_a_folder_the_user_gave_removes_only_what_it_wrote(tmp_path):
    project = tmp_path / "project"
    (project / "checkpoints" / "mine").mkdir(parents=True)
    (project / "checkpoints" / "mine" / "weights.bin").write_text("precious")
    (project / "metrics.jsonl").write_text("{}\n")
    (project / "train.py").write_text("code")
    runs.claim_new(project)
    (project / "config.toml").write_text("")
    (project / "hardware.json").write_text("{}")
    assert runs.abandon(project)
    assert sorted(p.name for p in project.iterdir()) == ["checkpoints", "metrics.jsonl", "train.py"]
    assert (project / "checkpoints" / "mine" / "weights.bin").read_text() == "precious"
