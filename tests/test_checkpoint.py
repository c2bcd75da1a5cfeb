import os
import pickle

import pytest
import torch

from dlscale import checkpoint
from dlscale.errors import UserError


def state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}}


def extra(step: int) -> dict:
    return {"step": step, "rng": torch.get_rng_state()}


def save(tmp_path, step, value, keep=0):
    return checkpoint.save(tmp_path, step, state(value), extra(step), {"model": "m"}, keep=keep)


def test_save_then_load_round_trips_and_points_latest(tmp_path):
    save(tmp_path, 5, 5.0)
    save(tmp_path, 10, 10.0)
    newest = checkpoint.newest_checkpoint(tmp_path)
    assert newest.name == "step-10"
    assert os.readlink(tmp_path / "checkpoints" / "latest") == "step-10"
    target = {"model": {"w": torch.zeros(3)}}
    checkpoint.load_state(newest, target)
    assert torch.equal(target["model"]["w"], torch.full((3,), 10.0))
    assert checkpoint.load_extra(newest, 0)["step"] == 10
    assert checkpoint.read_meta(newest)["world_size"] == 1


def test_a_worker_that_did_not_exist_takes_rank_0s_extra_state(tmp_path):
    path = save(tmp_path, 3, 1.0)
    assert checkpoint.load_extra(path, 2)["step"] == 3


def test_keep_prunes_older_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, float(step), keep=2)
    assert [s for s, _ in checkpoint.complete_steps(tmp_path)] == [3, 4]


def test_a_crash_mid_save_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    save(tmp_path, 1, 1.0)

    def dies_half_way(obj, path):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt  # as good as a kill for the code that follows

    monkeypatch.setattr(checkpoint, "_fsynced_save", dies_half_way)  # after DCP wrote its shards
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, 2.0)
    assert not (tmp_path / "checkpoints" / "step-2").exists()
    assert checkpoint.newest_checkpoint(tmp_path).name == "step-1"
    assert os.readlink(tmp_path / "checkpoints" / "latest") == "step-1"


def test_resaving_a_step_replaces_it_whole(tmp_path):
    save(tmp_path, 3, 1.0)
    save(tmp_path, 3, 7.0)
    target = {"model": {"w": torch.zeros(3)}}
    checkpoint.load_state(tmp_path / "checkpoints" / "step-3", target)
    assert torch.equal(target["model"]["w"], torch.full((3,), 7.0))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_tampered_metadata_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save(tmp_path, 1, 1.0)
    (path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load_state(path, {"model": {"w": torch.zeros(3)}})
    assert not (tmp_path / "pwned").exists()


def test_a_tampered_extra_file_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save(tmp_path, 1, 1.0)
    with (path / "extra-rank0.pt").open("wb") as handle:
        torch.save({"payload": Evil()}, handle, pickle_module=pickle)
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load_extra(path, 0)
    assert not (tmp_path / "pwned").exists()


def test_load_model_fills_a_plain_module(tmp_path):
    trained = torch.nn.Linear(3, 2)
    checkpoint.save(tmp_path, 1, {"model": trained.state_dict()}, extra(1), {}, keep=0)
    fresh = torch.nn.Linear(3, 2)
    checkpoint.load_model(tmp_path / "checkpoints" / "step-1", fresh)
    assert torch.equal(fresh.weight, trained.weight)
