"""A process that holds a lock and is stopped (Ctrl-Z, ``scontrol suspend``): shared by the
tests of every lock that must not wait for such a holder forever."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path


@contextlib.contextmanager
def stopped_lock_holder(cache_file: Path):
    """A real process that takes the lock of ``cache_file`` and then stops itself (as
    Ctrl-Z or ``scontrol suspend`` would stop it), holding the lock until it is killed."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    lock = cache_file.with_name(cache_file.name + ".lock")
    code = (
        "import fcntl, os, signal, sys\n"
        f"handle = open({str(lock)!r}, 'a')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        deadline = time.monotonic() + 10
        while _state(child.pid) != "T":  # wait until it is really stopped
            assert time.monotonic() < deadline, "the lock holder did not stop"
            time.sleep(0.01)
        yield child
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait(timeout=10)


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
