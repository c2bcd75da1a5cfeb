"""Checks every reader shares, so that bad input fails with one clear line before it costs anything.

- Memory: data that cannot fit is refused before it is allocated, with the sizes in
  the message, instead of the OOM killer ending the run without a word. What is
  available is dlscale.training.memory's answer, the same one the batch-size check uses.
- Regular files: a FIFO blocks its reader forever and /dev/zero never ends, so
  anything but a regular file (or a link to one) is refused by name.
- Values: labels that are not class numbers and samples that are not finite are
  refused where they are found, instead of surfacing later as a classifier with
  2**31 outputs or a run that "diverged".
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np
import torch

from dlscale.hardware import memory
from dlscale.errors import UserError
from dlscale.units import format_bytes

MAX_CLASSES = 2**20  # far above any real label set, far below what makes the classifier absurd
CHUNK_ELEMENTS = 1 << 24  # values checked at once for non-finite samples (64 MiB as float32)
FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


# --------------------------------------------------------------------------- memory


def require_memory(needed: int, what: str, fix: str) -> None:
    """Refuse `what` when it needs more bytes than this process may still allocate; `fix` says what to do instead."""
    room = available_memory()
    if room is not None and needed > room.bytes:
        raise UserError(
            f"{what} needs about {format_bytes(needed)} of memory but only {format_bytes(room.bytes)} "
            f"is available ({room.source}); {fix}"
        )


def available_memory() -> memory.Available | None:
    """What dlscale.training.memory finds (cgroup limits such as SLURM's --mem, ulimit, MemAvailable),
    else the machine's physical memory: macOS has neither /proc nor cgroups, and still needs a bound."""
    room = memory.available(torch.device("cpu"))
    if room is not None:
        return room
    try:
        return memory.Available(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory")
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------- files


def names_a_file(path: Path) -> bool:
    """Anything at path but a directory. Readers find their files with this rather than
    Path.is_file(), so that a FIFO or device under an expected name is reported by
    require_regular_file instead of being skipped without a word."""
    return path.exists() and not path.is_dir()


def require_regular_file(path: Path, name: str | None = None) -> None:
    """Refuse a FIFO, socket, device or directory where data should be a regular file.
    A missing or unreadable path passes: the reader's own open reports it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode):
        return
    kind = next((words for is_kind, words in FILE_KINDS if is_kind(mode)), "something else")
    target = os.path.realpath(path)
    shown = name or str(path)
    if target != os.path.abspath(path):
        shown += f" (a link to {target})"
    raise UserError(
        f"{shown} is {kind}, not a regular file; dlscale reads data only from regular files, "
        "so copy the data into a file and give that path"
    )


# --------------------------------------------------------------------------- values


def check_labels(labels: np.ndarray, where: str) -> None:
    """Labels must be class numbers 0..MAX_CLASSES-1. The number of classes is the largest
    label + 1, so one label of 2**31 would build a classifier with 2**31 outputs."""
    bad = np.flatnonzero((labels < 0) | (labels >= MAX_CLASSES))
    if len(bad):
        index = int(bad[0])
        more = f" (and {len(bad) - 1} more out of range)" if len(bad) > 1 else ""
        raise UserError(
            f"{where} holds label {labels[index]} at index {index}{more}; labels are class "
            f"numbers counted from 0, never negative and below {MAX_CLASSES}: renumber them, "
            "e.g. y = np.unique(y, return_inverse=True)[1]"
        )


def first_non_finite(x: np.ndarray | torch.Tensor) -> int | None:
    """Index of the first sample holding NaN or inf as float32 (what the model sees, so a float64
    1e300 counts), or None. Checked in chunks so that the check itself stays small in memory."""
    floating = x.dtype.kind == "f" if isinstance(x, np.ndarray) else x.is_floating_point()
    if not floating:
        return None  # integers and bools always fit in float32
    per_sample = max(1, math.prod(x.shape[1:]))
    step = max(1, CHUNK_ELEMENTS // per_sample)
    for start in range(0, len(x), step):
        part = x[start : start + step]
        if isinstance(part, np.ndarray):
            with np.errstate(over="ignore"):  # overflow to inf is exactly what is looked for
                part = torch.from_numpy(part.astype(np.float32))
        finite = torch.isfinite(part.float()).reshape(len(part), -1).all(dim=1)
        if not finite.all():
            return start + int(torch.nonzero(~finite)[0])
    return None
