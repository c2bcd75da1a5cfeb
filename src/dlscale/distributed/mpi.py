"""MPI: the ``mpirun`` (Open MPI) or ``mpiexec`` (MPICH, Intel MPI) line that starts a
command once per rank, and running it.

The line exports MASTER_ADDR/MASTER_PORT to every rank; each rank then finds its rank in
the launcher's variables (``dlscale.distributed.env.detect``). Under Open MPI
``--output-filename`` writes one folder of logs per rank (and still shows every rank on
the console): under ``<run-dir>/logs`` when the command has ``--run-dir``, else under
the launch's own folder ``runs/<UTC-time>-mpi/logs``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dlscale.distributed.hostlist import expand_hostlist
from dlscale.distributed.job import check_port, check_positive, launch_dir, run_dir_of
from dlscale.errors import UserError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class MpiLaunch:
    line: list[str]  # the launcher's argv, as printed
    executable: str | None  # the launcher found on PATH, or None
    log_dir: str | None  # Open MPI's per-rank logs


def prepare(
    *,
    np: int,
    command: list[str],
    hosts: str | None = None,
    hostfile: str | None = None,
    launcher: str = "auto",
    port: int = DEFAULT_PORT,
    log_dir: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> MpiLaunch:
    """The line that runs ``command`` in ``np`` ranks with this machine's MPI; inside a
    SLURM or PBS allocation with no hosts given, rank 0's host is the allocation's first."""
    check_positive(np, "--np")
    check_port(port, "--port")
    flavour, executable = mpi_flavour(launcher)
    names = host_names(hosts, hostfile) or allocation_hosts()  # inside sbatch/qsub, mpirun spreads ranks over the allocation
    if flavour == "openmpi":
        run_dir = run_dir_of(command)
        log_dir = log_dir or str(Path(run_dir) / "logs" if run_dir else launch_dir("mpi") / "logs")
    else:
        log_dir = None
    line = mpi_line(
        flavour=flavour, np=np, command=command, hosts=hosts, hostfile=hostfile,
        master_addr=master_address(names), port=port, log_dir=log_dir, extra=extra,
        as_root=hasattr(os, "geteuid") and os.geteuid() == 0,
        executable=Path(executable).name if executable else None,
    )
    return MpiLaunch(line=line, executable=executable, log_dir=log_dir)


def run(launch: MpiLaunch, say: Callable[[str], None]) -> int:
    """Run the line (``say`` shows it first); the launcher's exit code."""
    if launch.executable is None:
        raise UserError(
            f"{launch.line[0]} not found on PATH: install Open MPI (apt-get install openmpi-bin) or MPICH "
            "(apt-get install mpich), or load your cluster's MPI module"
        )
    if launch.log_dir:
        Path(launch.log_dir).mkdir(parents=True, exist_ok=True)
    say(shlex.join(launch.line))
    sys.stdout.flush()
    return subprocess.run([launch.executable, *launch.line[1:]]).returncode


def mpi_flavour(launcher: str = "auto") -> tuple[str, str | None]:
    """(flavour, executable found on PATH or None): "openmpi" runs mpirun, "mpich" mpiexec.

    ``auto`` asks ``mpirun --version`` (else ``mpiexec --version``): Open MPI says
    "Open MPI"; MPICH's Hydra says "HYDRA"; Intel MPI says "Intel(R) MPI"."""
    if launcher == "openmpi":
        return "openmpi", shutil.which("mpirun")
    if launcher == "mpich":
        return "mpich", shutil.which("mpiexec") or shutil.which("mpirun")
    for name in ("mpirun", "mpiexec"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        said = done.stdout + done.stderr
        if "Open MPI" in said or "OpenRTE" in said:
            return "openmpi", path
        if any(mark in said for mark in ("HYDRA", "Intel(R) MPI", "MPICH", "MVAPICH")):
            return "mpich", path
    if shutil.which("mpirun") or shutil.which("mpiexec"):
        raise UserError("cannot tell which MPI 'mpirun --version' belongs to; say it with --launcher openmpi or --launcher mpich")
    raise UserError(
        "no mpirun or mpiexec on PATH: install Open MPI (apt-get install openmpi-bin) or MPICH "
        "(apt-get install mpich), or load your cluster's MPI module"
    )


def allocation_hosts(environ: dict[str, str] | None = None) -> list[str]:
    """The nodes of the batch allocation this runs in, where mpirun will place ranks
    when given no hosts: SLURM's SLURM_JOB_NODELIST, or PBS's PBS_NODEFILE."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_NODELIST"):
        try:
            return expand_hostlist(env["SLURM_JOB_NODELIST"])
        except UserError as exc:
            raise UserError(f"SLURM_JOB_NODELIST: {exc}") from None
    if env.get("PBS_NODEFILE"):
        try:
            return [line.strip() for line in Path(env["PBS_NODEFILE"]).read_text().splitlines() if line.strip()]
        except OSError:
            return []
    return []


def master_address(hosts: list[str]) -> str:
    """Rank 0's host: the first host (MPI places ranks in host order), or loopback on one machine."""
    if len(set(hosts)) <= 1 and (not hosts or hosts[0] in ("localhost", "127.0.0.1") or hosts[0] == socket.gethostname()):
        return "127.0.0.1"
    if hosts[0] in ("localhost", "127.0.0.1"):  # other hosts must reach rank 0: use this machine's name
        return socket.getfqdn()
    return hosts[0]


def mpi_line(
    *,
    flavour: str,
    np: int,
    command: list[str],
    hosts: str | None = None,
    hostfile: str | None = None,
    master_addr: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    log_dir: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
    as_root: bool = False,
    executable: str | None = None,
) -> list[str]:
    """The launcher's argv: Open MPI's mpirun or MPICH/Intel MPI's mpiexec."""
    check_positive(np, "--np")
    check_port(port, "--port")
    if flavour == "openmpi":
        line = [executable or "mpirun", "-np", str(np)]
        if hosts:
            line += ["--host", hosts]
        if hostfile:
            line += ["--hostfile", hostfile]
        line += ["-x", f"MASTER_ADDR={master_addr}", "-x", f"MASTER_PORT={port}"]
        if hosts or hostfile:
            line += ["-x", "PATH"]  # remote ranks find the same python and dlscale (Open MPI forwards no variables by default)
        if as_root:
            line.append("--allow-run-as-root")  # Open MPI refuses root without it; containers often run as root
        line += ["--bind-to", "none"]  # the default binds each rank to one core, starving torch's threads and data workers
        if log_dir:
            line += ["--output-filename", log_dir]  # <dir>/1/rank.<N>/stdout|stderr, and still on the console
    elif flavour == "mpich":
        line = [executable or "mpiexec", "-n", str(np)]
        if hosts:
            line += ["-hosts", hosts]
        if hostfile:
            line += ["-f", hostfile]
        line += ["-genv", "MASTER_ADDR", master_addr, "-genv", "MASTER_PORT", str(port)]
    else:
        raise UserError(f"unknown MPI launcher {flavour!r}; use openmpi or mpich")
    return [*line, *extra, *command]


def host_names(hosts: str | None, hostfile: str | None) -> list[str]:
    """Host names, in order, from --hosts or --hostfile (slot counts dropped)."""
    if hosts:
        names = [h.split(":")[0].strip() for h in hosts.split(",")]
        if not all(names):
            raise UserError(f"--hosts {hosts!r}: give host names separated by commas, e.g. node1,node2 or node1:4,node2:4")
        return names
    if hostfile:
        try:
            lines = Path(hostfile).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read --hostfile {hostfile}: {exc.strerror or exc}") from None
        names = [line.split("#")[0].split()[0].split(":")[0] for line in lines if line.split("#")[0].strip()]
        if not names:
            raise UserError(f"--hostfile {hostfile} lists no hosts")
        return names
    return []
