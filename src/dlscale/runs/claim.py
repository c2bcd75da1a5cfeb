"""One writer per run directory.

A run directory is claimed for the life of the run by an exclusive lock on its `.lock`
file (flock: the operating system lets go when the process ends, however it ends, so
no stale lock is ever left). Workers started by `dlscale train --nproc N` share their
launcher's claim; under torchrun, SLURM or MPI, rank 0 claims it for the job. The nodes
of one multi-node job share the claim with shared locks. A fresh run that fails before
its first checkpoint is removed again (``abandon``), so the corrected command can reuse
its --run-dir.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from dlscale.errors import UserError
from dlscale.runs.checkpoint import newest_checkpoint
from dlscale.runs.directory import RUN_FILES, check_new_run_dir, holds_run, unique_run_dir
from dlscale.runs.files import FILE_MODE

CLAIM_ENV = "DLSCALE_RUN_CLAIMED"  # the run directory a launcher claimed for its workers

_claims: dict[Path, int] = {}  # claimed run directory -> the open file descriptor holding the lock
# fresh runs this process claimed (a resumed run is never removed) -> the names its folder
# held before (never removed), or None when this process created the folder
_fresh: dict[Path, set[str] | None] = {}


def _drop_claims_in_child() -> None:
    """A forked child (a data loader's worker) closes its copies of the lock descriptors: the
    lock then ends with the process that claimed it, not with the last of its children, so
    a run killed with SIGKILL can be resumed at once."""
    for fd in _claims.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _claims.clear()
    _fresh.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_claims_in_child)


def claim(path: Path, shared: bool = False) -> None:
    """Hold ``path`` for this run, or raise ``run X is in use by process N on host H``."""
    import fcntl
    import socket

    path = Path(path)
    key = path.resolve()
    if key in _claims or os.environ.get(CLAIM_ENV) == str(key):
        return
    fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        _refuse_in_use(path, fd)
    mark = f"{os.getpid()} {socket.gethostname()}\n".encode()
    os.pwrite(fd, mark, 0)
    os.ftruncate(fd, len(mark))
    _claims[key] = fd


def _open_lock(path: Path, flags: int) -> int:
    """The run's .lock, refused unless it is a plain file of its own: a symbolic link there
    would have the owner line written into whatever file it names, a FIFO would block."""
    lock = Path(path) / ".lock"
    try:
        fd = os.open(lock, flags | os.O_NOFOLLOW | os.O_NONBLOCK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{lock} is a symbolic link, which dlscale never makes; remove it, then run again") from None
        raise UserError(f"cannot use run directory {path}: {exc.strerror or exc}; give --run-dir a writable place") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{lock} is not a plain file (a FIFO, device or hard link); remove it, then run again")
    return fd


def _refuse_in_use(path: Path, fd: int) -> None:
    owner = os.pread(fd, 200, 0).decode(errors="replace").split()
    os.close(fd)
    pid, host = (owner + ["?", "?"])[:2]
    raise UserError(
        f"run {path} is in use by process {pid} on host {host}; wait for it to end, or give another --run-dir"
    )


def refuse_if_in_use(path: Path) -> None:
    """Say who holds ``path``, without creating anything in it."""
    import fcntl

    if not os.path.lexists(Path(path) / ".lock"):
        return
    fd = _open_lock(Path(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        _refuse_in_use(Path(path), fd)
    os.close(fd)


def release(path: Path) -> None:
    _fresh.pop(Path(path).resolve(), None)
    fd = _claims.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor lets go of the lock


def claim_new(path: Path, shared: bool = False) -> Path:
    """Create (if needed) and claim the directory of a fresh run, refusing one that holds a
    run: checked after the lock is held, so two runs given the same --run-dir cannot both
    pass the check."""
    path = Path(path)
    if path.is_dir() and holds_run(path):  # refused as it is: nothing is added to another run
        refuse_if_in_use(path)
    check_new_run_dir(path)
    found: set[str] | None = None
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        found = set(os.listdir(path))
    except OSError as exc:
        raise UserError(f"cannot create run directory {path}: {exc.strerror or exc}; give --run-dir a writable place") from None
    claim(path, shared=shared)
    try:
        check_new_run_dir(path)
    except UserError:
        release(path)
        raise
    _fresh[path.resolve()] = found
    return path


def claim_fresh(name: str, root: Path = Path("runs")) -> Path:
    """A new timestamped run directory, created atomically and claimed."""
    path = unique_run_dir(name, root, create=True)
    claim(path)
    _fresh[path.resolve()] = None
    return path


def abandon(path: Path) -> bool:
    """After a failure: keep a run that can be resumed (it has a complete checkpoint) or
    that was resumed; remove what a fresh run wrote before its first checkpoint, so the
    corrected command can run again with the same --run-dir. Worker logs are kept to read.
    True when the run was removed."""
    path = Path(path)
    key = path.resolve()
    try:
        if key not in _fresh or newest_checkpoint(path) is not None or not path.is_dir():
            return False
        import shutil

        found = _fresh[key] or set()  # the user's own files in a --run-dir they gave stay
        for name in (*RUN_FILES, ".lock"):
            if name not in found:
                (path / name).unlink(missing_ok=True)
        for folder in ("checkpoints", "tb"):
            if folder not in found and not (path / folder).is_symlink():
                shutil.rmtree(path / folder, ignore_errors=True)
        if _fresh[key] is None:  # this process made the folder: remove it when nothing else is left
            try:
                path.rmdir()  # (worker logs stay, and so does the folder then)
            except OSError:
                pass
        return True
    finally:
        release(path)


def abandon_claimed() -> None:
    """``abandon`` every run this process claimed (its run failed)."""
    for key in list(_claims):
        abandon(key)


def release_all() -> None:
    for key in list(_claims):
        release(key)
