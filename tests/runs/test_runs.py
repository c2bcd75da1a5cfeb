import os
import threading

import pytest
import torch

from dlscale.runs import directory as runs
from dlscale.errors import UserError


def test_default_run_dir_names_time_model_and_data(tmp_path):
    path = runs.default_run_dir("cnn", "/data/my mnist/", root=tmp_path)
    assert path.parent == tmp_path and path.name.endswith("-cnn-my-mnist")
    path.mkdir()
    assert runs.default_run_dir("cnn", "/data/my mnist/", root=tmp_path) != path


def test_create_refuses_a_directory_holding_a_run(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        runs.create_run_dir(tmp_path)


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
