"""The one launcher of this node's workers: torchrun's elastic agent
(``torch.distributed.launcher.api``), used by ``train`` and every bench alike.

``dlscale train --nproc 4`` does not fork workers itself: ``launch`` hands
``python -m dlscale <worker args>`` to the same agent ``torchrun`` uses, which sets each
worker's RANK/LOCAL_RANK/WORLD_SIZE, runs the rendezvous (c10d on this node's loopback
for one node; the given endpoint, or a static master address, for several), watches the
workers, restarts them all up to ``max_restarts`` times when one dies, and writes each
worker's output to its own log file. A worker sees torchrun's variables and works
instead of launching again. However the workers fail, ``launch`` says it one way: one
``UserError`` line naming the rank and repeating its error, or ``Stopped`` on a signal.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from dlscale.errors import Stopped, UserError, signal_name


@dataclass(frozen=True)
class LaunchPlan:
    nproc: int  # workers on this node
    nnodes: int = 1
    node_rank: int = 0  # for a static rendezvous (--master-addr)
    rdzv_endpoint: str | None = None  # host:port of a c10d rendezvous
    master_addr: str | None = None
    master_port: int = 29500
    max_restarts: int = 0
    run_id: str = ""  # what the nodes meet under: the same on every node (required with nnodes > 1)
    timeout_s: float = 900.0  # how long the nodes wait for each other to join


def rendezvous_id(*parts: object) -> str:
    """A rendezvous id every node derives alike from what they were all given (the run
    directory's name, the meeting point, the node count), never from where the shared file
    system is mounted on each node. It keys the c10d rendezvous state and prefixes the
    static store, so launchers with different ids never meet."""
    import hashlib

    return "dlscale-" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _rendezvous(plan: LaunchPlan) -> tuple[str, str, dict[str, object]]:
    """(backend, endpoint, configs) as torchrun would choose them."""
    if plan.nnodes == 1 and not plan.rdzv_endpoint and not plan.master_addr:
        return "c10d", "localhost:0", {}  # torchrun --standalone: a free port on loopback
    wait = max(1, round(plan.timeout_s))  # a node that never comes ends the others after this, not 600-900 s
    if plan.rdzv_endpoint:
        return "c10d", plan.rdzv_endpoint, {"join_timeout": wait, "timeout": wait}
    if plan.master_addr:
        return "static", f"{plan.master_addr}:{plan.master_port}", {"rank": plan.node_rank, "timeout": wait}
    raise UserError(
        f"--nnodes {plan.nnodes} needs a meeting point: give --rdzv-endpoint HOST:PORT "
        "(the same on every node) or --master-addr HOST with --node-rank"
    )


def run_workers(worker_args: list[str], plan: LaunchPlan, log_dir: Path) -> dict[int, int]:
    """Run ``python -m dlscale WORKER_ARGS`` in ``plan.nproc`` workers; return the failed
    global ranks with their exit codes (empty when every worker succeeded)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Workers of a restarted attempt must not meet in the store the failed attempt used: its
    # stale keys point them at dead peers (Gloo then fails with "connection refused"). Without
    # sharing, every rendezvous round gets a fresh store.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    backend, endpoint, configs = _rendezvous(plan)
    config = LaunchConfig(
        min_nodes=plan.nnodes,
        max_nodes=plan.nnodes,
        nproc_per_node=plan.nproc,
        run_id=plan.run_id or uuid.uuid4().hex[:12],
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=configs,
        max_restarts=plan.max_restarts,
        role="rank",
        log_line_prefix_template="[rank ${rank}] ",
        monitor_interval=0.2,
        # seconds a worker has, after SIGTERM, to save its checkpoint and stop before the agent
        # SIGKILLs it (also what a frozen worker costs); SLURM's own grace (KillWait) is 30 s
        shutdown_timeout=30,
        start_method="spawn",
        # every worker's output to its own file; local rank 0 also to this console
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), redirects=Std.ALL, tee={0: Std.ALL}),
    )
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    def forward_usr1(signum: int, frame: object) -> None:
        # the agent handles SIGTERM and SIGINT by passing them to the workers and waiting
        # for them; SLURM's requeue signal (SIGUSR1) would otherwise end this process alone
        raise SignalException(f"process {os.getpid()} got SIGUSR1", sigval=signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, forward_usr1)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "dlscale", *worker_args)
    except ChildFailedError as failed:
        return {rank: failure.exitcode for rank, failure in failed.failures.items()}
    except SignalException as exc:
        raise LauncherSignalled(int(exc.sigval)) from None
    except (RendezvousError, DistError) as exc:  # the nodes never met, or lost each other
        raise UserError(_lost_nodes(exc, plan, endpoint, log_dir)) from None
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return {}


def _lost_nodes(exc: BaseException, plan: LaunchPlan, endpoint: str, log_dir: Path) -> str:
    """One line for a rendezvous that failed: nodes that never came, or a node that went away."""
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousTimeoutError

    where = f"rendezvous {endpoint}, id {plan.run_id}"
    if isinstance(exc, RendezvousTimeoutError):
        return (f"the {plan.nnodes} nodes did not all join within --timeout {plan.timeout_s:g} s ({where}): start the "
                "same command on every node, with the same --run-dir and meeting point, or raise --timeout")
    if isinstance(exc, RendezvousClosedError):
        return f"another node ended the job ({where}); its own output says why. This node's worker logs: {log_dir}"
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return (f"lost contact with the other nodes ({where}): {reason}. A node died or its network went away; "
            f"this node's worker logs: {log_dir}")


class LauncherSignalled(Exception):
    """The launcher got a stop signal; the agent passed it on and waited for the workers."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOPPED = "dlscale: stopped by "  # how a worker that saved and stopped on a signal says so


_RANK_PREFIX = re.compile(r"^\[rank ?\d+\]:? ?")  # torchrun's "[rank 0] " (or "[rank0]:") before a worker's line
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure)|[A-Z][\w.]*Error\w*)(?::\s*(.*))?$")


def raised_exception(lines: list[str]) -> str | None:
    """``Type: message`` of the exception the last Python traceback in ``lines`` ended with
    (the one raised innermost, at the bottom of the traceback), its message's first line."""
    found, in_traceback = None, False
    for raw in lines:
        line = _RANK_PREFIX.sub("", raw)
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            match = _EXCEPTION.match(line)
            if match:
                kind, message = match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip()
                found = f"{kind}: {message}" if message else kind
                in_traceback = False
    if found and len(found) > 400:
        found = found[:400] + " ..."
    return found


def failure_line(log_dir: Path) -> str | None:
    """What to repeat on the launcher's console about why workers ended: the last ``error: ...``
    (or ``dlscale: stopped by ...``) line any worker wrote, else the exception a worker's
    traceback ended with (``error: Type: message``), so a reason never lives only in a log."""
    lines, raised = [], []
    for log in sorted(Path(log_dir).rglob("stderr.log")):
        try:
            text = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        said = [_RANK_PREFIX.sub("", l) for l in text]
        lines += [l for l in said if l.startswith("error: ") or l.startswith(STOPPED)]
        exception = raised_exception(text)  # which strips the rank prefixes itself
        if exception:
            raised.append(f"error: {exception} (see {log})")
    stopped = [l for l in lines if l.startswith(STOPPED)]
    return (stopped or lines or raised or [None])[-1]


def _named_signal(said: str) -> int:
    """The signal a ``dlscale: stopped by SIGTERM ...`` line names: the exit code of the rank
    that failed first may instead be the agent's kill of a worker still leaving."""
    name = said[len(STOPPED):].split(" ", 1)[0]
    return int(getattr(signal.Signals, name, signal.SIGTERM))


def launch(worker_args: list[str], plan: LaunchPlan, log_dir: Path, env: dict[str, str] | None = None) -> None:
    """Run ``python -m dlscale WORKER_ARGS`` in the plan's workers, with ``env`` added to the
    environment they inherit (and this process's restored after); every way they can fail
    becomes one exception: ``Stopped`` when they stopped on a signal, else a ``UserError``
    naming the first failed rank and the last error line any worker wrote."""
    extra = env or {}
    previous = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        failed = run_workers(worker_args, plan, log_dir=log_dir)
    except LauncherSignalled as signalled:  # the workers saved and stopped (or were killed after the grace)
        said = failure_line(log_dir) or ""
        if said.startswith(STOPPED):
            raise Stopped(said[len("dlscale: "):], signalled.signum) from None
        raise Stopped(f"stopped by {signal_name(signalled.signum)} before the workers saved a checkpoint", signalled.signum) from None
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if failed:
        first = min(failed)
        said = failure_line(log_dir)
        if said and said.startswith(STOPPED):  # a worker got the signal, not this launcher
            raise Stopped(said[len("dlscale: "):], _named_signal(said))
        reason = said[len("error: "):] if said else f"see its log under {log_dir}"
        raise UserError(f"worker rank {first} failed (exit code {failed[first]}): {reason}")


def check_devices(device: str, nproc: int) -> None:
    """NCCL needs one GPU per worker: say so before starting workers that would collide."""
    import torch

    requested = device.strip().lower()
    if requested == "mps":
        raise UserError("torch.distributed has no MPS backend; use --device cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        if requested.startswith("cuda"):
            from dlscale.hardware.device import resolve_device

            resolve_device(requested)  # the clear "no CUDA GPU" error
        return
    if requested not in ("auto", "cuda"):
        if nproc > 1:
            raise UserError(f"--device {device} puts every worker on one GPU; with --nproc above 1 use --device cuda (one GPU per worker)")
        return
    gpus = torch.cuda.device_count()
    if nproc > gpus:
        raise UserError(f"--nproc {nproc} but this node has {gpus} GPU(s) and NCCL needs one per worker; "
                        f"use --nproc {gpus} or less, or --device cpu")
