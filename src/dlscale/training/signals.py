"""Signals that save the work: a stop request is answered at the end of a step, with a
checkpoint, never by dying mid-step.

SIGTERM is what SLURM (and most schedulers) send at a time limit, SIGUSR1 what
``sbatch --signal=USR1@60`` sends ahead of it to ask for a requeue, SIGINT is Ctrl-C.
Each one asks the trainer to finish the step it is in, write a checkpoint and stop with
exit code 128 + the signal's number; ``dlscale train --resume`` then continues exactly.
A second Ctrl-C exits at once, without saving.

With several workers, each may see its signal at a different step (or only one sees it),
so the workers agree: after every step each adds its request to a small all-reduce on a
CPU (Gloo) group, started without waiting and read one step later, so every worker stops
after the same step and no GPU stream is synchronised for it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import torch

from dlscale.distributed import process_group as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
LAUNCHER_PID_ENV = "DLSCALE_LAUNCHER_PID"  # set by `dlscale train --nproc N` for its workers
# A preemption drill: rank 0 sends itself SIGTERM after this step, as a scheduler's time limit
# would, so the real stop, checkpoint and resume can be rehearsed (and tested) at a known step.
DRILL_ENV = "DLSCALE_DRILL_SIGTERM_AT_STEP"


class StopRequests:
    """Installed around the training loop; ``agreed()`` after every step says whether (and on
    which signal) every worker stops now."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal this process received
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._pending: Any = None  # the all-reduce started after the previous step
        self._flag: torch.Tensor | None = None
        wanted = os.environ.get(DRILL_ENV, "")
        self._drill_step = int(wanted) if wanted.isdigit() else None  # read once, not every step

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        if dist.world_size() > 1:
            self._group = dist.cpu_group()
            self._flag = torch.zeros(1, dtype=torch.int32)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._pending is not None and exc[0] is None:  # leave no collective half-done
            self._pending.wait()
        self._pending = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Ctrl-C reaches a launcher's workers twice (from the terminal, then passed on by the
        # launcher): there a repeated signal changes nothing, and a second Ctrl-C ends the
        # launcher, whose workers then stop with it
        under_launcher = LAUNCHER_PID_ENV in os.environ
        if self.signum is not None and signum == signal.SIGINT and not under_launcher:
            _say_now("error: interrupted twice: stopped at once, without saving")
            os._exit(128 + signum)
        if self.signum is None:
            self.signum = signum
            if dist.is_main():  # said at once: the step it waits for may take minutes
                again = "; Ctrl-C again stops at once, without saving" if signum == signal.SIGINT and not under_launcher else ""
                _say_now(f"dlscale: {signal.Signals(signum).name} received: saving a checkpoint after this step, "
                         f"then stopping{again}")

    def drill(self, step: int) -> None:
        """SIGTERM to this process after ``step`` when DRILL_ENV names it (rank 0 only)."""
        if step == self._drill_step and dist.is_main():
            os.kill(os.getpid(), signal.SIGTERM)

    def agreed(self) -> int | None:
        """The signal on which every worker stops after this step, or None to go on."""
        if self._group is None:
            return self.signum
        import torch.distributed as torch_dist

        decided = None
        if self._pending is not None:
            self._pending.wait()
            decided = int(self._flag[0]) or None
        if decided is None:
            self._flag.fill_(self.signum or 0)
            self._pending = torch_dist.all_reduce(self._flag, op=torch_dist.ReduceOp.MAX, group=self._group, async_op=True)
        else:
            self._pending = None
        return decided


def stop_quietly_under_launcher() -> None:
    """A worker of ``dlscale train --nproc N`` that saved and is stopping ignores further stop
    signals: the workers leave a moment apart, and torchrun's agent sends SIGTERM to those still
    running when the first one exits, which would turn their clean stop into a kill."""
    if LAUNCHER_PID_ENV in os.environ and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def _say_now(line: str) -> None:
    """One stderr line from a signal handler: a raw write, as the handler may have interrupted
    a print to stderr (a second buffered write there raises "reentrant call")."""
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode())
    except (AttributeError, OSError, ValueError):  # a notebook's stderr has no file descriptor
        print(line, file=sys.stderr, flush=True)


def die_with_launcher() -> None:
    """A worker started by ``dlscale train --nproc N`` gets SIGTERM (and so saves and stops)
    when its launcher dies, even by SIGKILL, instead of training on as an orphan."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(launcher):  # the launcher died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
