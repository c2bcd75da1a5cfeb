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
where the job expects one, with the kind of value it expects (``runs.safe_load``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.runs.safe_load import safe_planner, safe_reader

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
    run_dir: Path, step: int, state: dict[str, Any], extra: dict[str, Any], meta: dict[str, Any], keep: int,
    name: str | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically (a collective: every worker calls it).

    ``state`` holds what DCP shards (model and optimizer state dicts); ``extra`` is this
    worker's own small state. A ``name`` (``best``) saves under that name instead, outside
    the rotation: ``latest`` keeps pointing at the newest step and nothing is pruned."""
    root = checkpoints_dir(run_dir)
    final = root / (name or f"step-{step}")
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
            _finish(root, tmp, final, step, meta, keep if name is None else None)
        except OSError as exc:
            failure = _innermost(exc)
    _raise_if_any_failed([dist.broadcast(failure)], run_dir, tmp, step)
    return final


def _finish(root: Path, tmp: Path, final: Path, step: int, meta: dict[str, Any], keep: int | None) -> None:
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
    if keep is not None:  # a named checkpoint (best) stays out of the rotation
        _point_latest(root, final.name)
    _fsync_dir(root)
    if keep is not None:
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
