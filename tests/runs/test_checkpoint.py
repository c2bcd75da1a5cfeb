import os
import pickle

import pytest
import torch

from dlscale.runs import checkpoint
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


# --------------------------------------------------------------------------- attacks on a real run
#
# Each attack tampers with a checkpoint that `dlscale train` wrote, the way someone who can
# replace files in a shared run directory would, with a payload that would create a file if
# any code ran. Every path that reads a checkpoint must refuse it with one `error:` line that
# names the checkpoint, and create nothing.

import shutil
import struct
import subprocess
import sys

from dlscale.runs.safe_load import _MetadataUnpickler


def _short_unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + struct.pack("<B", len(raw)) + raw  # SHORT_BINUNICODE


def _dotted_global_pickle(command: str, stack_global: bool) -> bytes:
    """A protocol-4 pickle naming os.system through DCP's metadata module, which imports os."""
    module, name = "torch.distributed.checkpoint.metadata", "os.system"
    if stack_global:
        callable_ = _short_unicode(module) + _short_unicode(name) + b"\x93"  # STACK_GLOBAL
    else:
        callable_ = b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL
    return b"\x80\x04" + callable_ + _short_unicode(command) + b"\x85R."  # TUPLE1, REDUCE, STOP


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real unfinished run with a checkpoint at step 2 (summary.json removed as if killed)."""
    from conftest import run_cli

    where = tmp_path_factory.mktemp("trained")
    done = run_cli(["train", "--max-steps", "2", "--run-dir", "run", "--precision", "fp32", "--no-channels-last"], cwd=where)
    assert done.returncode == 0, done.stderr
    (where / "run" / "summary.json").unlink()
    (where / "run" / "model.safetensors").unlink()  # written at the end, with summary.json: readers take the checkpoint
    return where / "run"


@pytest.fixture
def victim(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    return run, run / "checkpoints" / "step-2", tmp_path / "pwned"


def _refused(result, checkpoint_path, marker):
    assert not marker.exists(), "the payload ran"
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert str(checkpoint_path.name) in lines[0]


def _resume(run, tmp_path):
    """The first reader of a run's checkpoint: `dlscale train --resume`."""
    from conftest import run_cli

    return run_cli(["train", "--resume", str(run)], cwd=tmp_path)


def _every_reader(run, tmp_path):
    """The commands that read a run's checkpoint: resume, and inference on the trained run.
    Started side by side (inference takes no claim on the run), the results in that order."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dlscale", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for args in (["train", "--resume", str(run)],
                          ["bench", "infer", "--run", str(run), "--batch-sizes", "1", "--precisions", "fp32"])]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("stack_global", [False, True])
def test_a_dotted_global_in_the_metadata_is_refused_by_every_reader(victim, tmp_path, stack_global):
    run, path, marker = victim
    payload = _dotted_global_pickle(f"touch {marker}", stack_global)
    with pytest.raises(pickle.UnpicklingError):  # the reader itself: refused before anything is called
        _MetadataUnpickler(__import__("io").BytesIO(payload)).load()
    (path / ".metadata").write_bytes(payload)
    for result in _every_reader(run, tmp_path):
        _refused(result, path, marker)
        assert "os.system" in result.stderr


def _replace_byte_entry(path, key: str, payload: bytes, as_bytes_entry: bool = False) -> None:
    """Point checkpoint entry ``key`` at ``payload``, appended to the shard file, the way an
    attacker with write access would (the metadata is re-pickled with its real classes)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with (path / ".metadata").open("rb") as handle:
        metadata = _MetadataUnpickler(handle).load()
    index = next(i for i in metadata.storage_data if i.fqn == key)
    info = metadata.storage_data[index]
    shard = path / info.relative_path
    offset = shard.stat().st_size
    with shard.open("ab") as handle:
        handle.write(payload)
    info.offset, info.length = offset, len(payload)
    if as_bytes_entry:
        from torch.distributed.checkpoint.metadata import MetadataIndex

        metadata.state_dict_metadata[key] = BytesStorageMetadata()
        metadata.storage_data = {MetadataIndex(key) if i.fqn == key else i: v for i, v in metadata.storage_data.items()}
    with (path / ".metadata").open("wb") as handle:
        pickle.dump(metadata, handle)


def _torch_saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _Runs:
    """``__reduce__`` that would run a shell command when unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.slow
def test_a_pickled_object_in_an_optimizer_entry_is_refused_by_every_reader(victim, tmp_path):
    run, path, marker = victim
    _replace_byte_entry(path, "optimizer.param_groups.0.lr", _torch_saved(_Runs(f"touch {marker}")))
    result = _resume(run, tmp_path)  # inference reads the model's entries only
    _refused(result, path, marker)
    assert "optimizer.param_groups.0.lr" in result.stderr


@pytest.mark.slow
def test_a_changed_hyperparameter_of_another_kind_is_refused(victim, tmp_path):
    run, path, marker = victim
    _replace_byte_entry(path, "optimizer.param_groups.0.lr", _torch_saved("0.5"))  # plain data, wrong kind
    _refused(_resume(run, tmp_path), path, marker)


@pytest.mark.slow
def test_a_tensor_entry_turned_into_a_pickled_object_is_refused_by_every_reader(victim, tmp_path):
    run, path, marker = victim
    key = "model.features.0.0.weight"
    _replace_byte_entry(path, key, _torch_saved(_Runs(f"touch {marker}")), as_bytes_entry=True)
    for result in _every_reader(run, tmp_path):
        _refused(result, path, marker)


@pytest.mark.slow
def test_a_pickled_extra_file_is_refused_on_resume(victim, tmp_path):
    run, path, marker = victim
    (path / "extra-rank0.pt").write_bytes(_torch_saved({"step": _Runs(f"touch {marker}")}))
    from conftest import run_cli

    _refused(run_cli(["train", "--resume", str(run)], cwd=tmp_path), path, marker)


def test_an_unexpected_byte_entry_is_refused(tmp_path):
    """A checkpoint holding a pickled entry the job has no slot for is not read at all."""
    checkpoint.save(tmp_path, 1, {"model": {"w": torch.ones(3), "note": "x"}}, extra(1), {}, keep=0)
    with pytest.raises(UserError, match="model.note"):
        checkpoint.load_state(tmp_path / "checkpoints" / "step-1", {"model": {"w": torch.zeros(3)}})


def test_plain_non_tensor_entries_still_round_trip(tmp_path):
    saved = {"model": {"w": torch.ones(3)}, "optimizer": {"param_groups": [{"lr": 0.5, "betas": (0.9, 0.99), "foreach": None, "params": ["w"]}]}}
    checkpoint.save(tmp_path, 1, saved, extra(1), {}, keep=0)
    target = {"model": {"w": torch.zeros(3)}, "optimizer": {"param_groups": [{"lr": 0.1, "betas": (0.0, 0.0), "foreach": None, "params": ["w"]}]}}
    checkpoint.load_state(tmp_path / "checkpoints" / "step-1", target)
    assert target["optimizer"]["param_groups"][0]["lr"] == 0.5
    assert tuple(target["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.99)


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs): room for one checkpoint of the cnn, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_error_line_and_the_previous_checkpoint_resumes(small_disk, tmp_path):
    from conftest import last_json, run_cli

    args = ["train", "--max-steps", "6", "--checkpoint-every", "2", "--precision", "fp32", "--no-channels-last"]
    full = run_cli([*args, "--run-dir", str(small_disk / "run")], cwd=tmp_path)
    assert full.returncode == 2, full.stderr[-2000:]
    (line,) = full.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: cannot save checkpoint step-4") and "its file system has 0." in line, line
    assert "the previous checkpoint step-2 is kept" in line and "Traceback" not in full.stderr
    checkpoints = small_disk / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-2"]  # no .step-4.tmp left

    moved = tmp_path / "run"  # room again: the kept checkpoint resumes and the run ends
    shutil.copytree(small_disk / "run", moved, symlinks=True)
    (moved / ".lock").unlink()
    resumed = run_cli(["train", "--resume", str(moved), "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step 2" in resumed.stderr and last_json(resumed.stdout)["steps"] == 6


def test_a_stale_temporary_folder_of_a_killed_save_is_removed_on_resume(trained_run, tmp_path):
    from conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    stale = run / "checkpoints" / ".step-9.tmp"
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"half")
    resumed = run_cli(["train", "--resume", str(run), "--max-steps", "2"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not stale.exists()


@pytest.mark.slow
@pytest.mark.parametrize("garbage", ["not json {", "[1, 2]", '{"world_size": "two"}'])
def test_a_garbage_meta_json_is_one_error_line_on_resume(victim, tmp_path, garbage):
    from conftest import run_cli

    run, path, marker = victim
    (path / "meta.json").write_text(garbage)
    _refused(run_cli(["train", "--resume", str(run)], cwd=tmp_path), path, marker)


@pytest.mark.slow
def test_a_garbage_line_in_metrics_is_one_error_line_on_resume(victim, tmp_path):
    from conftest import run_cli

    run, path, marker = victim
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "\x00garbage", *lines[1:]]) + "\n")
    before = (run / "metrics.jsonl").read_text()
    result = run_cli(["train", "--resume", str(run)], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {run / 'metrics.jsonl'} line 2 is not a metrics record")
    assert (run / "metrics.jsonl").read_text() == before  # nothing lost


# --------------------------------------------------------------------------- found by an attack review


def test_metadata_may_not_rewrite_an_allowed_class_or_function(tmp_path):
    """BUILD on an allowed global would setattr on it for the whole process
    (``PosixPath.__fspath__`` redirected every later file write)."""
    import io
    import pathlib

    payload = (b"\x80\x04" + _short_unicode("pathlib") + _short_unicode("PosixPath") + b"\x93"
               + b"N}" + _short_unicode("__fspath__") + _short_unicode("x") + b"s\x86" + b"b.")  # (None, {...}), BUILD
    with pytest.raises(pickle.UnpicklingError, match="sets the state of type"):
        _MetadataUnpickler(io.BytesIO(payload)).load()
    assert not isinstance(pathlib.PosixPath.__fspath__, str)
    pickle._Unpickler(io.BytesIO(payload)).load()  # what plain pickle would have done to the process
    assert pathlib.PosixPath.__fspath__ == "x"
    del pathlib.PosixPath.__fspath__


@pytest.mark.slow
@pytest.mark.parametrize("where", ["absolute", "parent", "fifo", "past-the-end"])
def test_an_entry_outside_the_checkpoint_files_is_refused(victim, tmp_path, where):
    from conftest import run_cli

    run, path, marker = victim
    with (path / ".metadata").open("rb") as handle:
        metadata = _MetadataUnpickler(handle).load()
    info = next(iter(metadata.storage_data.values()))
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x" * 64)
    if where == "absolute":
        info.relative_path = str(outside)
    elif where == "parent":
        info.relative_path = "../../../outside.pt"
    elif where == "fifo":
        os.mkfifo(path / "pipe.distcp")
        info.relative_path = "pipe.distcp"
    else:
        info.offset = (path / info.relative_path).stat().st_size
    with (path / ".metadata").open("wb") as handle:
        pickle.dump(metadata, handle)
    result = run_cli(["train", "--resume", str(run)], cwd=tmp_path, timeout=120)  # a FIFO would block for ever
    _refused(result, path, marker)
