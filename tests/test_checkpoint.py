import os
import pickle

import pytest
import torch

from dlscale import checkpoint
from dlscale.errors import UserError


def state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": int(value)}


def test_save_then_load_round_trips_and_points_latest(tmp_path):
    checkpoint.save(tmp_path, 5, state(5.0), {"model": "m"}, keep=0)
    checkpoint.save(tmp_path, 10, state(10.0), {"model": "m"}, keep=0)
    newest = checkpoint.newest_checkpoint(tmp_path)
    assert newest.name == "step-10"
    assert os.readlink(tmp_path / "checkpoints" / "latest") == "step-10"
    assert torch.equal(checkpoint.load(newest)["model"]["w"], torch.full((3,), 10.0))


def test_keep_prunes_older_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, step, state(step), {}, keep=2)
    assert [s for s, _ in checkpoint.complete_steps(tmp_path)] == [3, 4]


def test_a_crash_mid_save_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, state(1.0), {}, keep=0)

    def dies_half_way(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as good as a kill for the code that follows

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, state(2.0), {}, keep=0)
    assert not (tmp_path / "checkpoints" / "step-2").exists()
    assert checkpoint.newest_checkpoint(tmp_path).name == "step-1"
    assert os.readlink(tmp_path / "checkpoints" / "latest") == "step-1"


def test_resaving_a_step_replaces_it_whole(tmp_path):
    checkpoint.save(tmp_path, 3, state(1.0), {}, keep=0)
    checkpoint.save(tmp_path, 3, state(7.0), {}, keep=0)
    assert torch.equal(checkpoint.load(tmp_path / "checkpoints" / "step-3")["model"]["w"], torch.full((3,), 7.0))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_runs_code_from_a_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "checkpoints" / "step-1"
    target.mkdir(parents=True)
    (target / "meta.json").write_text("{}")
    with (target / "state.pt").open("wb") as handle:
        torch.save({"payload": Evil()}, handle, pickle_module=pickle)
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load(target)
    assert not (tmp_path / "pwned").exists()
