"""Checkpoints that are complete or absent, never half-written.

A checkpoint is the folder ``checkpoints/step-<N>/`` holding ``state.pt`` (model,
optimizer, scheduler, scaler, RNG states, data position) and ``meta.json``. It is
written under a temporary name and renamed into place only once every byte is on
disk, so a crash mid-save leaves a stray temporary folder, never a ``step-<N>`` that
looks complete. ``latest`` is a symbolic link to the newest complete one.

Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, so a checkpoint can never run code when it is read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

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


def save(run_dir: Path, step: int, state: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with (tmp / "state.pt").open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    with (tmp / "meta.json").open("w") as handle:
        json.dump({"step": step, **meta}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a resumed run passing a step it saved before the crash
        stale = root / f".step-{step}.stale-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _point_latest(root, final.name)
    _fsync_dir(root)
    _prune(root, keep)
    return final


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
        if match and (entry / "state.pt").is_file() and (entry / "meta.json").is_file():
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


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint's state without unpickling arbitrary objects."""
    try:
        with (Path(path) / "state.pt").open("rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which, never run its code
        raise UserError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); "
            "delete it to resume from an older one"
        ) from None
