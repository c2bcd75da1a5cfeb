"""Joining and leaving the process group, and the small collectives built on it.

The group is started from whatever launched us (torchrun, SLURM, MPI), with the
backend chosen from the device (NCCL on CUDA, Gloo on CPU) and the device index taken
from the local rank, never the global rank (which runs past the GPUs of one node).

With one process nothing is started and every helper here is a no-op, so the trainer
calls them unconditionally.
"""

from __future__ import annotations

import datetime
import gc
import os
from typing import Any

import torch
import torch.distributed as dist

from dlscale.distributed.env import ClusterEnv, torch_env
from dlscale.errors import UserError


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(env: ClusterEnv, device: torch.device, timeout_s: float) -> None:
    """Join the job's process group (a no-op for a single process)."""
    if env.world_size == 1 or active():
        return
    os.environ.update(torch_env(env))  # SLURM and MPI speak their own variables; torch reads these
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # workers on one node share its cores: one thread pool each over all cores would thrash
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def init_alone(device: torch.device, timeout_s: float) -> None:
    """A process group of this one process, for a measurement that runs collectives with
    nobody else (``init`` starts nothing for one process); leave it with
    ``torch.distributed.destroy_process_group()``."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shutdown(keep: bool = False) -> None:
    """Leave the process group together: a worker tearing Gloo down while a peer still
    talks to it can abort ("terminate called without an active exception"). With ``keep``
    the group stays up after the barrier, for the next ``init`` in this process to reuse (a
    user's script under torchrun calling ``fit`` again: a second group on the same store fails)."""
    if active():
        try:
            dist.barrier()
        except Exception:  # a peer already failed: nothing left to wait for
            pass
        if keep:
            return
        global _cpu_group
        _cpu_group = None
        dist.destroy_process_group()
        gc.collect()  # release Gloo work objects while the interpreter is fully alive


_cpu_group: Any = None


def cpu_group() -> Any:
    """A Gloo group over the same workers, for small host-side agreements (a stop request)
    that should not synchronise a GPU stream; the default group when it is Gloo already.
    A collective: every worker calls it at the same point."""
    global _cpu_group
    if _cpu_group is None:
        _cpu_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _cpu_group


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's value, on every rank (small picklable objects only)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's value, on every rank."""
    if not active():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_agreement(what: str, value: Any) -> None:
    """Stop with a clear error when the ranks disagree on ``value`` (before training, not
    as a hang halfway through it)."""
    values = gather(value)
    if any(v != values[0] for v in values):
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise UserError(
            f"the workers disagree on {what}: rank 0 has {values[0]!r} but rank(s) {differing} "
            f"have {[values[r] for r in differing]!r}; start every worker with the same command and files"
        )


DistError = getattr(dist, "DistError", RuntimeError)


def on_main(work):
    """Run ``work()`` on rank 0 and hand its result to every rank; an exception it raises is
    raised on every rank too (instead of leaving the others waiting in a collective): a
    UserError as it is, any other as a RuntimeError naming it."""
    if not active():
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    failure: BaseException | None = None
    if is_main():
        try:
            outcome = ("ok", work())
        except UserError as exc:
            outcome = ("error", str(exc))
        except Exception as exc:  # noqa: BLE001 - said to every rank, then raised here as it was
            outcome, failure = ("failed", f"{type(exc).__name__}: {exc}"), exc
    kind, value = broadcast(outcome)
    if failure is not None:
        raise failure
    if kind == "error":
        raise UserError(value)
    if kind == "failed":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


class Watchdog:
    """Ends this worker when the job stops making progress for ``timeout_s`` seconds.

    A collective waiting on a frozen or dead peer can block forever (Gloo's backward-pass
    all-reduces do not always honour the process group's timeout). The trainer calls
    ``pet()`` after every step, evaluation batch and checkpoint; if none comes in time this
    thread says what happened, on one line, and exits with code 2, so the elastic agent
    ends the job (or restarts it) instead of leaving it hanging.
    """

    def __init__(self, timeout_s: float, what: str = "a training step") -> None:
        import threading
        import time

        self.timeout_s = timeout_s
        self.what = what
        self._last = time.monotonic()
        self._clock = time.monotonic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dlscale-watchdog", daemon=True)

    def __enter__(self) -> "Watchdog":
        if active() and world_size() > 1:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def pet(self) -> None:
        self._last = self._clock()

    def _watch(self) -> None:
        import sys

        while not self._stop.wait(1.0):
            idle = self._clock() - self._last
            if idle > self.timeout_s:
                print(
                    f"error: rank {rank()}: no progress for {idle:.0f} s (--timeout {self.timeout_s:g} s) in "
                    f"{self.what}: a collective is waiting for a worker that froze or died",
                    file=sys.stderr, flush=True,
                )
                os._exit(2)


def collective_failure(exc: BaseException, timeout_s: float) -> UserError | None:
    """A collective that failed because a peer froze or died, said in one line; None when
    ``exc`` is something else (a bug keeps its traceback)."""
    text = str(exc).lower()
    broken = isinstance(exc, DistError) or any(
        words in text for words in ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")
    )
    if world_size() <= 1 or not broken:
        return None
    return UserError(
        f"rank {rank()}: a collective operation failed or timed out (--timeout {timeout_s:g} s): "
        f"another worker froze or died ({str(exc).splitlines()[0][:160]})"
    )
