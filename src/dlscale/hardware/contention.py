"""Other work on this machine: a busy check, and a lock through which dlscale's own
processes take turns measuring.

A measurement taken while other work runs is low (and an MFU above 100% follows), so
measured peaks and the CPU settings probe record whether the machine was busy and take
turns through a file lock: several workers of one node start together, and one measures
while the others wait and then read what it wrote. A holder stopped with Ctrl-Z or
``scontrol suspend`` never lets go: after ``LOCK_WAIT_S`` the waiter says so on stderr
and goes on without the shared file.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

LOCK_WAIT_S = 30.0  # longest wait for another process's measurement before measuring without the cache
LOCK_POLL_S = 0.05
stuck_locks_reported: set[str] = set()  # lock files already reported as stuck, so each is said once


def load_average() -> float | None:
    """Runnable processes over the last minute (POSIX), None where the system does not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def is_busy(load: float | None) -> bool:
    """More runnable processes than half of torch's threads: a measurement now would be low."""
    return load is not None and load > 0.5 * torch.get_num_threads()


def machine_busy() -> bool:
    """Whether other work runs on this machine now (the one-minute load average)."""
    return is_busy(load_average())


@contextlib.contextmanager
def machine_lock(path: Path, wait_s: float | None = None) -> Iterator[bool]:
    """One process measures at a time (several workers of one node start together): the
    others wait, then read what it wrote, instead of measuring against each other.

    Yields True when this process may use the cache file at ``path`` (it holds the lock,
    or this system has no locks), False when the lock stayed taken for ``wait_s`` seconds
    (``LOCK_WAIT_S`` by default): a holder stopped with Ctrl-Z or ``scontrol suspend``
    never lets go, so the caller then measures without the cache and writes nothing.
    """
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield True
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a")
    except OSError:
        yield True
        return
    with handle:
        if not _flock_within(handle, wait_s):
            _say_lock_is_stuck(path, lock_path, wait_s)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flock_within(handle: Any, wait_s: float) -> bool:
    """Take an exclusive flock on ``handle``, polling until ``wait_s`` seconds have passed;
    False when another process still holds it then."""
    import fcntl

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_S)


def _say_lock_is_stuck(path: Path, lock_path: Path, wait_s: float) -> None:
    """One line on stderr, once per cache file and process."""
    if str(lock_path) in stuck_locks_reported:
        return
    stuck_locks_reported.add(str(lock_path))
    holder = _flock_holder(lock_path)
    who = f"process {holder}" if holder is not None else "a process"
    if holder is not None and _is_stopped(holder):
        who += ", which is stopped (Ctrl-Z or suspended) and"
    else:
        who += ", which"
    print(f"dlscale: the cache {path} is locked by {who} has not let go for {wait_s:g} s; measuring without it", file=sys.stderr)


def _is_stopped(pid: int) -> bool:
    try:  # /proc/PID/stat: "PID (name) STATE ...", T when stopped by a signal
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def _flock_holder(lock_path: Path) -> int | None:
    """The process that holds a flock on ``lock_path``, from /proc/locks; None when unknown."""
    try:
        stat = os.stat(lock_path)
        file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
        with open("/proc/locks") as handle:
            for line in handle:  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2150028 0 EOF"
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None
