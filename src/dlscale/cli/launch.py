"""``dlscale launch``: start a training command on a SLURM cluster or under MPI.

    dlscale launch slurm --nodes 2 --gpus-per-node 4 -- dlscale train --model resnet50
    dlscale launch mpi --np 4 -- dlscale train --model resnet18

**slurm** writes an sbatch script that runs one task per node; each task starts
torchrun's elastic agent, the agents meet through torchrun's c10d rendezvous on the
job's first node (the recipe of torchrun's own SLURM examples), and each agent starts
one worker per GPU with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* set. ``--dry-run`` prints
the script; otherwise it is written and handed to ``sbatch`` (or, where there is no
``sbatch``, left for the user to submit on the cluster's login node).

**mpi** builds an ``mpirun`` (Open MPI) or ``mpiexec`` (MPICH, Intel MPI) line that
starts the command once per rank and exports MASTER_ADDR/MASTER_PORT to every rank;
each rank then finds its rank in the launcher's variables (``dlscale.distributed.env.detect``).

Per-rank logs: under SLURM torchrun writes each worker's stdout and stderr to its own
file (``--log-dir``, ``--tee``) and copies local rank 0 to the job's output file; under
Open MPI ``--output-filename`` writes one folder per rank and still shows every rank on
the console. Both go to ``<run-dir>/logs`` when the command has ``--run-dir``, else to
the launch's own folder ``runs/<UTC-time>-slurm|mpi/logs``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from dlscale.errors import UserError

DEFAULT_MPI_PORT = 29500


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "launch",
        help="run a command on a SLURM cluster (sbatch + torchrun) or under MPI (mpirun)",
        description="Start a command, usually 'dlscale train ...', on several nodes: through SLURM "
        "(an sbatch script running torchrun on every node) or an MPI launcher (mpirun/mpiexec).",
    )
    kinds = p.add_subparsers(dest="launch_kind", metavar="KIND", parser_class=type(p))
    _add_slurm(kinds)
    _add_mpi(kinds)
    p.set_defaults(handler=run)


def _add_slurm(kinds: Any) -> None:
    s = kinds.add_parser(
        "slurm",
        help="write an sbatch script that runs the command with torchrun on every node, and submit it",
        description=(
            "Write an sbatch script: one SLURM task per node, each starting torchrun with "
            "--nproc-per-node=GPUS and the c10d rendezvous on the job's first node. Without "
            "--dry-run the script is written and submitted with sbatch."
        ),
        epilog=(
            "examples:\n"
            "  dlscale launch slurm --nodes 2 --gpus-per-node 4 --dry-run -- dlscale train --model resnet50\n"
            "  dlscale launch slurm --nodes 4 --gpus-per-node 8 --time 02:00:00 --partition gpu \\\n"
            "      --sbatch=--mem=0 --sbatch=--exclusive -- dlscale train --config run.toml\n"
            "  dlscale launch slurm --nodes 2 --gpus-per-node 1 -- python -m mypackage.train --lr 0.1\n"
            "\n"
            "The command is run by torchrun: 'dlscale ...' becomes 'torchrun ... -m dlscale ...', "
            "'python -m MODULE ...' and 'python SCRIPT.py ...' likewise."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = s.add_argument
    add("--nodes", type=int, required=True, help="nodes to allocate (one torchrun per node)")
    add("--gpus-per-node", type=int, required=True, metavar="G", help="GPUs per node; torchrun starts G workers on each node")
    add("--cpus-per-task", type=int, metavar="N", help="CPU cores for each node's task (its G workers share them)")
    add("--time", help="time limit: HH:MM:SS, MM, MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    add("--partition", help="SLURM partition (queue)")
    add("--account", help="account to charge")
    add("--job-name", default="dlscale", help="job name (default dlscale)")
    add("--output", metavar="PATH", help="the job's output file; %%j is the job id (default: slurm-%%j.out beside the script)")
    add("--sbatch", action="append", default=[], metavar="LINE",
        help="an extra '#SBATCH LINE' (repeatable); write it with '=': --sbatch=--mem=64G")
    add("--port", type=int, help="rendezvous port on the first node (default: 15000 + the job id's last four digits)")
    add("--script", metavar="PATH", help="where to write the script (default runs/<UTC-time>-slurm/job.sbatch)")
    add("--dry-run", action="store_true", help="print the script and write nothing")
    add("user_command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="what to run, e.g. dlscale train --model resnet50")


def _add_mpi(kinds: Any) -> None:
    m = kinds.add_parser(
        "mpi",
        help="run the command once per rank with mpirun/mpiexec",
        description=(
            "Run the command once per MPI rank with mpirun (Open MPI) or mpiexec (MPICH, Intel MPI), "
            "exporting MASTER_ADDR and MASTER_PORT to every rank; each rank reads its rank from the "
            "launcher's variables."
        ),
        epilog=(
            "examples:\n"
            "  dlscale launch mpi --np 2 -- dlscale train --max-steps 100\n"
            "  dlscale launch mpi --np 8 --hosts node1:4,node2:4 --dry-run -- dlscale train --model resnet18\n"
            "  dlscale launch mpi --np 4 --launcher mpich --mpi-arg=-ppn --mpi-arg=2 -- dlscale train"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = m.add_argument
    add("--np", type=int, required=True, metavar="N", help="number of ranks (processes)")
    where = m.add_mutually_exclusive_group()
    where.add_argument("--hosts", metavar="H1,H2", help="hosts to run on (Open MPI and Hydra both accept host:slots)")
    where.add_argument("--hostfile", metavar="FILE", help="a host file in your MPI's format")
    add("--launcher", choices=("auto", "openmpi", "mpich"), default="auto",
        help="which MPI: openmpi (mpirun), mpich (mpiexec; also Intel MPI, MVAPICH); auto asks 'mpirun --version'")
    add("--port", type=int, default=DEFAULT_MPI_PORT, help=f"MASTER_PORT for rank 0 (default {DEFAULT_MPI_PORT})")
    add("--log-dir", metavar="DIR", help="Open MPI: one folder of logs per rank here (default <run-dir>/logs or runs/<UTC-time>-mpi/logs)")
    add("--mpi-arg", action="append", default=[], metavar="ARG",
        help="an extra argument for mpirun/mpiexec (repeatable); write it with '=': --mpi-arg=--oversubscribe")
    add("--dry-run", action="store_true", help="print the line and run nothing")
    add("user_command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="what each rank runs, e.g. dlscale train")


def run(args: argparse.Namespace) -> int:
    if args.launch_kind == "slurm":
        return run_slurm(args)
    if args.launch_kind == "mpi":
        return run_mpi(args)
    raise UserError("say where to launch: 'dlscale launch slurm ...' or 'dlscale launch mpi ...' (see 'dlscale launch --help')")


# --------------------------------------------------------------------------- shared


def _command(args: argparse.Namespace, kind: str) -> list[str]:
    command = list(args.user_command)  # not `args.command`: that is the top-level subcommand's name
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError(f"give the command to run after '--', e.g. 'dlscale launch {kind} ... -- dlscale train --model resnet50'")
    return command


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def _port_ok(value: int | None, flag: str) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise UserError(f"{flag} must be a TCP port (1-65535), got {value}")


def run_dir_of(command: list[str]) -> str | None:
    """The ``--run-dir`` the command gives, if it gives one."""
    for i, word in enumerate(command):
        if word == "--run-dir" and i + 1 < len(command):
            return command[i + 1]
        if word.startswith("--run-dir="):
            return word.split("=", 1)[1]
    return None


def _launch_dir(kind: str, root: Path = Path("runs")) -> Path:
    """A fresh ``runs/<UTC-time>-<kind>`` folder name (not created)."""
    from dlscale.runs.directory import unique_run_dir

    return unique_run_dir(kind, root)


# --------------------------------------------------------------------------- slurm

_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
_TIME = re.compile(r"\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+|\d+-\d+:\d\d|\d+-\d+:\d\d:\d\d")


def torchrun_target(command: list[str]) -> list[str]:
    """What follows torchrun's own flags: ``dlscale train ...`` -> ``-m dlscale train ...``;
    ``python -m MODULE ...`` -> ``-m MODULE ...``; ``python SCRIPT.py ...`` -> ``SCRIPT.py ...``."""
    program, rest = Path(command[0]).name, command[1:]
    if program == "dlscale":
        return ["-m", "dlscale", *rest]
    if program == "torchrun":
        raise UserError("the script starts torchrun itself; give the command torchrun should run, e.g. '-- dlscale train ...'")
    if _PYTHON.fullmatch(program):
        while rest and rest[0] == "-u":  # torchrun already runs its workers unbuffered
            rest = rest[1:]
        if rest[:1] == ["-m"] and len(rest) >= 2:
            if rest[1] == "torch.distributed.run":
                raise UserError("the script starts torchrun itself; give the command torchrun should run, e.g. '-- dlscale train ...'")
            return rest
        if rest and not rest[0].startswith("-"):
            return rest
        shown = " ".join(command[:2])
        raise UserError(
            f"torchrun cannot run '{shown} ...': give 'python -m MODULE ...' or 'python SCRIPT.py ...' "
            "(no other interpreter flags)"
        )
    raise UserError(
        f"dlscale launch slurm runs Python programs through torchrun; give 'dlscale ...', "
        f"'python -m MODULE ...' or 'python SCRIPT.py ...', not '{command[0]} ...'"
    )


def _sbatch_value(value: str, flag: str) -> str:
    """A value for an #SBATCH line, quoted as sbatch's own parser reads quotes (like the shell)."""
    if not value or any(ch in value for ch in "\n\r\\"):
        raise UserError(f"{flag} {value!r}: give a non-empty value without newlines or backslashes")
    return shlex.quote(value)


def _extra_line(line: str) -> str:
    text = line.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not text.startswith("-") or any(ch in text for ch in "\n\r"):
        raise UserError(f"--sbatch {line!r}: give one sbatch option, e.g. --sbatch=--mem=64G or --sbatch='--constraint=a100'")
    return text


def check_time(value: str) -> str:
    """SLURM's --time formats; minutes and seconds below 60."""
    if not _TIME.fullmatch(value) or any(int(part) >= 60 for part in value.split("-")[-1].split(":")[1:]):
        raise UserError(f"--time {value!r} is not a SLURM time limit; write HH:MM:SS (e.g. 02:00:00), MM, or D-HH:MM:SS")
    return value


def sbatch_script(
    *,
    nodes: int,
    gpus_per_node: int,
    command: list[str],
    log_dir: str,
    output: str,
    job_name: str = "dlscale",
    time: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    cpus_per_task: int | None = None,
    extra: list[str] | tuple[str, ...] = (),
    port: int | None = None,
    script: str = "THIS_FILE",
) -> str:
    """The sbatch script: one task per node, each running torchrun with the c10d rendezvous."""
    _positive(nodes, "--nodes")
    _positive(gpus_per_node, "--gpus-per-node")
    _positive(cpus_per_task, "--cpus-per-task")
    _port_ok(port, "--port")
    target = torchrun_target(command)
    q = shlex.quote
    directives = [
        f"--job-name={_sbatch_value(job_name, '--job-name')}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        # --gres=gpu:G, not --gpus-per-node=G: gres works with every select plugin
        # (cons_res and cons_tres) and SLURM release; --gpus-per-node needs cons_tres.
        f"--gres=gpu:{gpus_per_node}",
    ]
    if cpus_per_task:
        directives.append(f"--cpus-per-task={cpus_per_task}")
    if time:
        directives.append(f"--time={check_time(time)}")
    if partition:
        directives.append(f"--partition={_sbatch_value(partition, '--partition')}")
    if account:
        directives.append(f"--account={_sbatch_value(account, '--account')}")
    directives.append(f"--output={_sbatch_value(output, '--output')}")
    directives += [_extra_line(line) for line in extra]

    srun = ["srun", "--kill-on-bad-exit=1"]  # one failed node ends the job instead of leaving the others waiting
    if cpus_per_task:
        srun.append(f"--cpus-per-task={cpus_per_task}")  # srun does not inherit it from sbatch on SLURM 22.05+
    port_line = (
        f"port={port}"
        if port
        else "port=$((15000 + SLURM_JOB_ID % 10000))  # from the job id, as Lightning does: two jobs sharing a node do not collide"
    )
    torchrun = [
        "torchrun",
        '--nnodes="$SLURM_NNODES"',
        f"--nproc-per-node={gpus_per_node}",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$head_node:$port"',
        '--rdzv-id="$SLURM_JOB_ID"',
        '--log-dir="$log_dir"',
        "--tee=3",
        "--local-ranks-filter=0",
    ]
    body = " \\\n    ".join([" ".join(srun) + " " + torchrun[0], *torchrun[1:], " ".join(q(w) for w in target)])
    lines = [
        "#!/bin/bash",
        f"# Written by `dlscale launch slurm`. Submit it from the folder it was written in: sbatch {q(script)}",
        "#",
        f"# One SLURM task per node; each starts torchrun's elastic agent, which starts {gpus_per_node} worker(s),",
        "# one per GPU. The agents meet through torchrun's c10d rendezvous on the job's first node, which",
        "# hands out the ranks. sbatch passes on the submitting shell's environment (an active venv too).",
        *(f"#SBATCH {d}" for d in directives),
        "",
        "set -euo pipefail",
        "",
        '# sed, not head -n1: head would close the pipe early and pipefail would count it as a failure',
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        port_line,
        "# every worker's stdout and stderr: $log_dir/<job id>_<suffix>/attempt_<n>/<local rank>/{stdout,stderr}.log",
        "# (one <suffix> per node); local rank 0 of each node is also copied to the output file",
        f"log_dir={q(log_dir)}",
        'echo "dlscale: job $SLURM_JOB_ID, $SLURM_NNODES node(s) ($SLURM_JOB_NODELIST), rendezvous $head_node:$port, logs in $log_dir" >&2',
        "",
        body,
        "",
    ]
    return "\n".join(lines)


def run_slurm(args: argparse.Namespace) -> int:
    command = _command(args, "slurm")
    _positive(args.nodes, "--nodes")
    _positive(args.gpus_per_node, "--gpus-per-node")
    if args.script:
        script = Path(args.script)
        launch_dir = script.parent
    else:
        launch_dir = _launch_dir("slurm")
        script = launch_dir / "job.sbatch"
    run_dir = run_dir_of(command)
    log_dir = str(Path(run_dir) / "logs") if run_dir else str(launch_dir / "logs")
    output = args.output or str(launch_dir / "slurm-%j.out")
    text = sbatch_script(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, command=command, log_dir=log_dir, output=output,
        job_name=args.job_name, time=args.time, partition=args.partition, account=args.account,
        cpus_per_task=args.cpus_per_task, extra=args.sbatch, port=args.port, script=str(script),
    )
    if args.dry_run:
        sys.stdout.write(text)
        return 0

    _write_script(script, text, Path(output).parent)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"sbatch not found: submit {script} on the cluster's login node (from this folder: sbatch {script})")
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise UserError(f"sbatch refused {script}: {reason}")
    print(f"wrote {script}; per-rank logs will be in {log_dir}", file=sys.stderr)
    print(done.stdout.strip() or f"submitted {script}", flush=True)  # sbatch says "Submitted batch job 42"
    return 0


def _write_script(script: Path, text: str, output_dir: Path) -> None:
    if script.exists():
        raise UserError(f"{script} already exists; give another --script or remove it")
    try:
        script.parent.mkdir(parents=True, exist_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the output file's folder
        script.write_text(text)
        script.chmod(0o755)
    except OSError as exc:
        raise UserError(f"cannot write {script}: {exc.strerror or exc}; give --script a writable place") from None


# --------------------------------------------------------------------------- mpi


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


def _hosts(args: argparse.Namespace) -> list[str]:
    """Host names, in order, from --hosts or --hostfile (slot counts dropped)."""
    if args.hosts:
        names = [h.split(":")[0].strip() for h in args.hosts.split(",")]
        if not all(names):
            raise UserError(f"--hosts {args.hosts!r}: give host names separated by commas, e.g. node1,node2 or node1:4,node2:4")
        return names
    if args.hostfile:
        try:
            lines = Path(args.hostfile).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read --hostfile {args.hostfile}: {exc.strerror or exc}") from None
        names = [line.split("#")[0].split()[0].split(":")[0] for line in lines if line.split("#")[0].strip()]
        if not names:
            raise UserError(f"--hostfile {args.hostfile} lists no hosts")
        return names
    return []


def allocation_hosts(environ: dict[str, str] | None = None) -> list[str]:
    """The nodes of the batch allocation this runs in, where mpirun will place ranks
    when given no hosts: SLURM's SLURM_JOB_NODELIST, or PBS's PBS_NODEFILE."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_NODELIST"):
        from dlscale.distributed.env import expand_hostlist

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
    port: int = DEFAULT_MPI_PORT,
    log_dir: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
    as_root: bool = False,
    executable: str | None = None,
) -> list[str]:
    """The launcher's argv: Open MPI's mpirun or MPICH/Intel MPI's mpiexec."""
    _positive(np, "--np")
    _port_ok(port, "--port")
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


def run_mpi(args: argparse.Namespace) -> int:
    command = _command(args, "mpi")
    _positive(args.np, "--np")
    _port_ok(args.port, "--port")
    flavour, executable = mpi_flavour(args.launcher)
    hosts = _hosts(args) or allocation_hosts()  # inside sbatch/qsub, mpirun spreads ranks over the allocation
    log_dir = None
    if flavour == "openmpi":
        run_dir = run_dir_of(command)
        log_dir = args.log_dir or str(Path(run_dir) / "logs" if run_dir else _launch_dir("mpi") / "logs")
    line = mpi_line(
        flavour=flavour, np=args.np, command=command, hosts=args.hosts, hostfile=args.hostfile,
        master_addr=master_address(hosts), port=args.port, log_dir=log_dir, extra=args.mpi_arg,
        as_root=hasattr(os, "geteuid") and os.geteuid() == 0,
        executable=Path(executable).name if executable else None,
    )
    if args.dry_run:
        print(shlex.join(line), flush=True)
        return 0
    if executable is None:
        raise UserError(
            f"{line[0]} not found on PATH: install Open MPI (apt-get install openmpi-bin) or MPICH "
            "(apt-get install mpich), or load your cluster's MPI module"
        )
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    print(f"dlscale: {shlex.join(line)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    return subprocess.run([executable, *line[1:]]).returncode
