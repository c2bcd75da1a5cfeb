import json
import os
import math
import stat

import pytest
import torch

from dlscale.runs import directory as runs
from dlscale.errors import UserError


def test_default_run_dir_names_time_model_and_data(tmp_path):
    path = runs.default_run_dir("cnn", "/data/my mnist/", root=tmp_path)
    assert path.parent == tmp_path and path.name.endswith("-cnn-my-mnist")
    path.mkdir()
    assert runs.default_run_dir("cnn", "/data/my mnist/", root=tmp_path) != path


def test_atomic_json_writes_valid_json_with_normal_permissions(tmp_path):
    target = tmp_path / "summary.json"
    runs.write_json(target, {"a": 1.0, "bad": math.nan})
    assert json.loads(target.read_text()) == {"a": 1.0, "bad": None}
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_create_refuses_a_directory_holding_a_run(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        runs.create_run_dir(tmp_path)


def test_metrics_truncate_after_drops_lines_past_the_checkpoint(tmp_path):
    log = runs.MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        log.write({"step": step})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # cut off by a crash
    log.truncate_after(2)
    assert [r["step"] for r in runs.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def _run_with_checkpoint(path, model, data, when):
    from dlscale.runs import checkpoint

    checkpoint.save(path, 1, {"x": torch.ones(1)}, {"step": 1}, {}, keep=0)
    (path / "config.toml").write_text(f'model = "{model}"\ndata = "{data}"\n')
    os.utime(path / "checkpoints" / "step-1" / "meta.json", (when, when))


def test_find_resumable_picks_the_unfinished_run_saved_last_whatever_its_model(tmp_path):
    old, new, done = (tmp_path / n for n in ("a-old", "b-new", "c-done"))
    _run_with_checkpoint(old, "cnn", "digits", 1000)
    _run_with_checkpoint(new, "gpt-tiny", "synthetic", 2000)
    _run_with_checkpoint(done, "cnn", "digits", 3000)
    (done / "summary.json").write_text("{}")
    (tmp_path / "d-no-checkpoint").mkdir()
    assert runs.find_resumable(tmp_path) == new
    assert runs.find_resumable(tmp_path, model="cnn") == old
    assert runs.find_resumable(tmp_path, data="synthetic") == new
    assert runs.find_resumable(tmp_path, model="resnet18") is None


# --------------------------------------------------------------------------- one writer per run

import socket
import subprocess
import sys
import threading


def _holder(path) -> subprocess.Popen:
    """Another process that claims ``path`` and keeps it until killed."""
    code = (
        "import sys, time; from pathlib import Path; from dlscale.runs import directory as runs; "
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


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    made, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        made.append(runs.unique_run_dir("cnn-digits", tmp_path, create=True))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


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
