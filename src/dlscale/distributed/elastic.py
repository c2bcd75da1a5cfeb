"""Start workers through torchrun's elastic agent (``torch.distributed.launcher.api``).

``dlscale train --nproc 4`` does not fork workers itself: it hands
``python -m dlscale <worker args>`` to the same agent ``torchrun`` uses, which sets each
worker's RANK/LOCAL_RANK/WORLD_SIZE, runs the rendezvous (c10d on this node's loopback
for one node; the given endpoint, or a static master address, for several), watches the
workers, restarts them all up to ``max_restarts`` times when one dies, and writes each
worker's output to its own log file. A worker sees torchrun's variables and trains
instead of launching again.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from dlscale.errors import UserError


@dataclass(frozen=True)
class LaunchPlan:
    nproc: int  # workers on this node
    nnodes: int = 1
    node_rank: int = 0  # for a static rendezvous (--master-addr)
    rdzv_endpoint: str | None = None  # host:port of a c10d rendezvous
    master_addr: str | None = None
    master_port: int = 29500
    max_restarts: int = 0
    run_id: str = ""


def _rendezvous(plan: LaunchPlan) -> tuple[str, str, dict[str, object]]:
    """(backend, endpoint, configs) as torchrun would choose them."""
    if plan.nnodes == 1 and not plan.rdzv_endpoint and not plan.master_addr:
        return "c10d", "localhost:0", {}  # torchrun --standalone: a free port on loopback
    if plan.rdzv_endpoint:
        return "c10d", plan.rdzv_endpoint, {}
    if plan.master_addr:
        return "static", f"{plan.master_addr}:{plan.master_port}", {"rank": plan.node_rank}
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
    from torch.distributed.elastic.multiprocessing.api import SignalException

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
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return {}


class LauncherSignalled(Exception):
    """The launcher got a stop signal; the agent passed it on and waited for the workers."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOPPED = "dlscale: stopped by "  # how a worker that saved and stopped on a signal says so


def failure_line(log_dir: Path) -> str | None:
    """The last ``error: ...`` (or ``dlscale: stopped by ...``) line any worker wrote, to
    repeat on the launcher's console."""
    lines = []
    for log in sorted(Path(log_dir).rglob("stderr.log")):
        try:
            text = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        lines += [l for l in text if l.startswith("error: ") or l.startswith(STOPPED)]
    stopped = [l for l in lines if l.startswith(STOPPED)]
    return (stopped or lines or [None])[-1]
