"""Checkpoints that are complete or absent, never half-written, and reshardable.

A checkpoint is the folder ``checkpoints/step-<N>/``:

- the model and optimizer, saved with ``torch.distributed.checkpoint`` (DCP): every
  worker writes its shard, and a checkpoint saved by N workers loads into M workers
  (DDP or FSDP2) or into one process;
- ``extra-rank<R>.pt``: each worker's own state (schedule, scaler, RNG states, data
  position, timing totals), small, read with ``torch.load(weights_only=True)``;
- ``meta.json``: step, world size, model and data.

All of it is written under a temporary name that rank 0 renames into place once every
worker has finished writing, so a crash mid-save leaves a stray temporary folder, never
a ``step-<N>`` that looks complete. ``latest`` is a symbolic link to the newest.

Nothing is unpickled freely: DCP's metadata file is a pickle, so it is read with an
unpickler that only admits exact (module, name) pairs of DCP's own metadata classes and
a few torch types; tensors, DCP's non-tensor entries (optimizer hyperparameters) and the
extra files go through ``weights_only`` loading, and a non-tensor entry is taken only
where the job expects one, with the kind of value it expects.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from dlscale.distributed import process_group as dist
from dlscale.errors import UserError

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsynced_save(obj: Any, path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save(
    run_dir: Path, step: int, state: dict[str, Any], extra: dict[str, Any], meta: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` atomically (a collective: every worker calls it).

    ``state`` holds what DCP shards (model and optimizer state dicts); ``extra`` is this
    worker's own small state."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    failure = None
    if dist.is_main():
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
            tmp.mkdir()
        except OSError as exc:
            failure = _innermost(exc)
    _raise_if_any_failed([dist.broadcast(failure)], run_dir, tmp, step)
    # imported here, not at the top: torch.distributed.checkpoint takes ~0.5 s to import,
    # which every run would otherwise pay before its first step
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    failure = None
    try:
        with warnings.catch_warnings():  # DCP warns that one process "assumes" a single-process save
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True))
        _fsynced_save(extra, tmp / f"extra-rank{dist.rank()}.pt")
    except (OSError, RuntimeError, CheckpointException) as exc:  # a full disk, a quota, a file system gone
        failure = _innermost(exc)  # (torch's zip writer says "unexpected pos" where the OS said ENOSPC)
    _raise_if_any_failed(dist.gather(failure), run_dir, tmp, step)  # every worker wrote its part, or none goes on
    failure = None
    if dist.is_main():
        try:
            _finish(root, tmp, final, step, meta, keep)
        except OSError as exc:
            failure = _innermost(exc)
    _raise_if_any_failed([dist.broadcast(failure)], run_dir, tmp, step)
    return final


def _finish(root: Path, tmp: Path, final: Path, step: int, meta: dict[str, Any], keep: int) -> None:
    """Rank 0, once every shard is on disk: meta.json, then the rename that makes it count."""
    with (tmp / "meta.json").open("w") as handle:
        json.dump({"step": step, "world_size": dist.world_size(), **meta}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a resumed run passing a step it saved before the crash
        stale = root / f".step-{step}.stale"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _point_latest(root, final.name)
    _fsync_dir(root)
    _prune(root, keep)


def _innermost(exc: BaseException) -> str:
    """The reason under DCP's wrapping ("[Errno 28] No space left on device"); DCP repeats
    a metadata error once per read attempt ("... read failed: <reason>")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errno_lines = [line for line in lines if "Errno" in line]
    return (errno_lines or lines or [type(exc).__name__])[-1].rsplit("read failed: ", 1)[-1][:240]


def _raise_if_any_failed(failures: list[str | None], run_dir: Path, tmp: Path, step: int) -> None:
    said = [f for f in failures if f]
    if not said:
        return
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written checkpoint is left behind
    dist.barrier()
    newest = newest_checkpoint(run_dir)
    kept = f"the previous checkpoint {newest.name} is kept" if newest else "no earlier checkpoint exists"
    try:
        free = f"; its file system has {shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free"
    except OSError:
        free = ""
    raise UserError(
        f"cannot save checkpoint step-{step} in {checkpoints_dir(run_dir)} ({said[0]}){free}; {kept}; "
        f"free some space, then continue with: dlscale train --resume {run_dir}"
    )


def remove_stale(run_dir: Path) -> None:
    """Leftovers of a save that was killed half-way (the run's own process is gone)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if re.match(r"^\.step-\d+\.(tmp|stale)$", entry.name):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".latest.tmp-"):
            entry.unlink(missing_ok=True)


def _point_latest(root: Path, name: str) -> None:
    link = root / "latest"
    tmp_link = root / f".latest.tmp-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    os.symlink(name, tmp_link)
    os.replace(tmp_link, link)


def complete_steps(run_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and (entry / "meta.json").is_file() and (entry / ".metadata").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for _, path in complete_steps(root.parent)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def newest_checkpoint(run_dir: Path) -> Path | None:
    steps = complete_steps(run_dir)
    return steps[-1][1] if steps else None


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("world_size", 1), int):
        raise UserError(f"checkpoint {path} cannot be read (its meta.json is not what dlscale writes); delete it to resume from an older one")
    return meta


# --------------------------------------------------------------------------- loading


# Every global DCP's metadata pickle names, as exact (module, name) pairs. Pickle resolves a
# dotted name attribute by attribute (``os.system`` reached through a module that imports
# os), so a name with a dot is never admitted, whatever module it claims to be in.
_METADATA_GLOBALS = frozenset({
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
})


def _allowed(module: str, name: str) -> bool:
    """What DCP's metadata pickle may name: its own metadata classes and plain torch types."""
    if "." in name:
        return False
    if (module, name) in _METADATA_GLOBALS:
        return True
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


@functools.cache
def _metadata_classes() -> frozenset[Any]:
    """The allowed globals themselves, looked up once: only their instances may get state."""
    import importlib

    return frozenset(getattr(importlib.import_module(module), name) for module, name in _METADATA_GLOBALS)


class _MetadataUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be checked
    """Names only from the allow-list, and state set only on *instances* of those classes:
    pickle's BUILD calls setattr on whatever is on the stack, so a crafted file could
    otherwise rewrite an allowed class or function (``PosixPath.__fspath__``) for the rest
    of the process."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise pickle.UnpicklingError(f"its .metadata names {module}.{name}, which a checkpoint never needs")
        return super().find_class(module, name)

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, type) or type(target) not in _metadata_classes():
            raise pickle.UnpicklingError(f"its .metadata sets the state of {type(target).__name__}, which a checkpoint never does")
        if "__setstate__" not in vars(type(target)):  # (TensorProperties reads its own tuple)
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict) or not all(isinstance(k, str) and not k.startswith("__") for k in state):
                raise pickle.UnpicklingError("its .metadata holds an object state that is not plain data")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def safe_reader(path: Path):
    """DCP's file reader, with the metadata pickle read through the allow-list above."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            folder = Path(self.path)
            with (folder / ".metadata").open("rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
            _check_storage(folder, metadata)
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(Path(path))


def _check_storage(folder: Path, metadata: Any) -> None:
    """Every entry lies inside a shard file of this checkpoint: never a path outside it
    (an absolute path, ``..``), a FIFO that blocks, or bytes past the end of the file."""
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise pickle.UnpicklingError("its .metadata is not DCP's metadata")
    sizes: dict[str, int] = {}
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise pickle.UnpicklingError(f"an entry points at {name!r}, outside the checkpoint's own files")
        if name not in sizes:
            shard = folder / name
            if shard.is_symlink() or not shard.is_file():
                raise pickle.UnpicklingError(f"an entry points at {name}, which is not a plain file of the checkpoint")
            sizes[name] = shard.stat().st_size
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)) or offset + length > sizes[name]:
            raise pickle.UnpicklingError(f"an entry lies outside its shard file {name}")


def safe_planner():
    """DCP's load planner, but a non-tensor ("byte") entry is read with
    ``torch.load(weights_only=True)`` and only where the state dict expects a plain value.

    DCP stores what is not a tensor (the optimizer's ``param_groups`` values) as pickled
    bytes and its own planner unpickles them with ``weights_only=False``: a tampered entry
    would run code. Here such an entry can only be plain data (numbers, strings, lists,
    tensors), it may not replace a tensor, and it must have the type the job expects."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import get_element, set_element

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    class SafePlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> Any:
            plan = super().create_local_plan()
            # parts not asked for (the optimizer, when only the model is loaded) are never read
            asked = tuple(f"{key}." for key in self.original_state_dict)
            for fqn, entry in self.metadata.state_dict_metadata.items():
                if isinstance(entry, BytesStorageMetadata) and fqn.startswith(asked) and fqn not in self.state_dict:
                    raise ValueError(f"it holds a pickled entry {fqn} that this run does not expect")
            return plan

        def load_bytes(self, read_item: Any, value: Any) -> None:
            fqn = read_item.dest_index.fqn
            if fqn not in self.state_dict:
                raise ValueError(f"it holds a pickled entry {fqn} that this run does not expect")
            path = self.mappings.get(fqn) if self.flatten_state_dict else None
            expected = get_element(self.original_state_dict, path) if path is not None else self.state_dict[fqn]
            if isinstance(expected, torch.Tensor):
                raise ValueError(f"it stores {fqn} as a pickled object where this run expects a tensor")
            try:
                loaded = torch.load(value, map_location="cpu", weights_only=True)
            except Exception as exc:  # UnpicklingError names the global weights_only refused
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                for line in str(exc).splitlines():
                    if "Unsupported global" in line or "GLOBAL" in line:
                        reason = line.strip()
                        break
                raise ValueError(f"its entry {fqn} is not plain data ({reason[:160]})") from None
            if not same_kind(loaded, expected):
                raise ValueError(
                    f"its entry {fqn} holds a {type(loaded).__name__} where this run expects a {type(expected).__name__}"
                )
            if path is not None:
                set_element(self.original_state_dict, path, loaded)
            else:
                self.state_dict[fqn] = loaded

    return SafePlanner()


def same_kind(loaded: Any, expected: Any) -> bool:
    """Plain values keep their kind, all the way down: a number stays a number, a pair of
    numbers a pair of numbers, a dict keeps its keys."""
    numbers = (int, float)
    if isinstance(expected, bool) or isinstance(loaded, bool):
        return type(loaded) is type(expected)
    if isinstance(expected, numbers):
        return isinstance(loaded, numbers) and (not isinstance(loaded, float) or math.isfinite(loaded) or not math.isfinite(expected))
    if isinstance(expected, torch.Tensor):
        return isinstance(loaded, torch.Tensor) and loaded.dtype == expected.dtype
    if isinstance(expected, (list, tuple)):
        if not isinstance(loaded, (list, tuple)):
            return False
        if isinstance(expected, tuple) or (expected and len({type(e) for e in expected}) > 1):
            return len(loaded) == len(expected) and all(same_kind(a, b) for a, b in zip(loaded, expected))
        return not expected or all(same_kind(a, expected[0]) for a in loaded)  # a list of like items, any length
    if isinstance(expected, dict):
        return isinstance(loaded, dict) and loaded.keys() == expected.keys() and all(
            same_kind(loaded[k], expected[k]) for k in expected
        )
    return type(loaded) is type(expected)


def _unreadable(path: Path, exc: BaseException) -> UserError:
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    if isinstance(exc, CheckpointException):  # DCP wraps each rank's error: say the innermost reason
        return UserError(f"checkpoint {path} cannot be read ({_innermost(exc)}); delete it to resume from an older one")
    return UserError(
        f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
        "delete it to resume from an older one"
    )


def load_state(path: Path, state: dict[str, Any]) -> None:
    """Fill ``state`` (model/optimizer state dicts shaped for this job) in place from a checkpoint."""
    loader_log = logging.getLogger()  # DCP's loader logs on the root logger, a traceback per failed fallback
    level = loader_log.level
    loader_log.setLevel(logging.CRITICAL)  # the one-line error below says it
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=safe_reader(path), planner=safe_planner())
    except (Exception, CheckpointException) as exc:  # corrupt, foreign or tampered files: say which, never run their code
        raise _unreadable(path, exc) from None
    finally:
        loader_log.setLevel(level)


def load_extra(path: Path, rank: int) -> dict[str, Any]:
    """This worker's extra state; a worker that did not exist when it was saved takes rank 0's."""
    path = Path(path)
    target = path / f"extra-rank{rank}.pt"
    if not target.is_file():
        target = path / "extra-rank0.pt"
    try:
        with target.open("rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from None


def load_model(path: Path, model: torch.nn.Module) -> None:
    """Load only the model weights of a checkpoint into a plain module (inference, evaluation)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    load_state(path, state)
    set_model_state_dict(model, state["model"])
