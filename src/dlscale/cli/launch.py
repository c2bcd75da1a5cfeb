"""``dlscale launch``: start a training command on a SLURM cluster or under MPI.

    dlscale launch slurm --nodes 2 --gpus-per-node 4 -- dlscale train --model resnet50
    dlscale launch mpi --np 4 -- dlscale train --model resnet18

**slurm** writes an sbatch script (``dlscale.distributed.slurm``) and hands it to
``sbatch`` (or, where there is no ``sbatch``, leaves it for the user to submit on the
cluster's login node); ``--dry-run`` writes and prints the script without submitting it.
**mpi** builds an ``mpirun`` or ``mpiexec`` line (``dlscale.distributed.mpi``) and runs
it; ``--dry-run`` prints it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from dlscale.distributed import mpi
from dlscale.errors import UserError


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
            "--nproc-per-node=GPUS (or --nproc K CPU workers) and the c10d rendezvous on the job's first "
            "node. The script is written and submitted with sbatch; with --dry-run it is written and "
            "printed, not submitted."
        ),
        epilog=(
            "examples:\n"
            "  dlscale launch slurm --nodes 2 --gpus-per-node 4 --dry-run -- dlscale train --model resnet50\n"
            "  dlscale launch slurm --nodes 4 --gpus-per-node 8 --time 02:00:00 --partition gpu \\\n"
            "      --sbatch=--mem=0 --sbatch=--exclusive -- dlscale train --config run.toml\n"
            "  dlscale launch slurm --nodes 2 --gpus-per-node 1 -- python -m mypackage.train --lr 0.1\n"
            "  dlscale launch slurm --nodes 2 --gpus-per-node 0 --nproc 4 -- dlscale train   # a CPU-only cluster\n"
            "\n"
            "The command is run by torchrun: 'dlscale ...' becomes 'torchrun ... -m dlscale ...', "
            "'python -m MODULE ...' and 'python SCRIPT.py ...' likewise."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = s.add_argument
    add("--nodes", type=int, required=True, help="nodes to allocate (one torchrun per node)")
    add("--gpus-per-node", type=int, required=True, metavar="G",
        help="GPUs per node; torchrun starts G workers on each node. 0: a CPU-only cluster (no gres asked for; give --nproc)")
    add("--nproc", type=int, metavar="K", help="workers per node (default: G, one per GPU; required with --gpus-per-node 0)")
    add("--cpus-per-task", type=int, metavar="N", help="CPU cores for each node's task (its G workers share them)")
    add("--time", help="time limit: HH:MM:SS, MM, MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    add("--partition", help="SLURM partition (queue)")
    add("--account", help="account to charge")
    add("--job-name", default="dlscale", help="job name (default dlscale)")
    add("--output", metavar="PATH", help="the job's output file; %%j is the job id (default: slurm-%%j.out beside the script)")
    add("--sbatch", action="append", default=[], metavar="LINE",
        help="an extra '#SBATCH LINE' (repeatable); write it with '=': --sbatch=--mem=64G")
    add("--port", type=int, help="rendezvous port on the first node (default: 15000 + the job id's last four digits)")
    add("--requeue", action=argparse.BooleanOptionalAction, default=True,
        help="for 'dlscale train': ask SLURM for SIGUSR1 ahead of the time limit (the run saves and stops); "
        "with '--resume auto --run-dir DIR' also make the job requeueable, a requeued job resuming the run (default on)")
    add("--signal-before", type=int, default=90, metavar="SECS",
        help="how long before the time limit SLURM sends SIGUSR1 (default 90; SLURM may be up to ~30 s late)")
    add("--script", metavar="PATH", help="where to write the script (default runs/<UTC-time>-slurm/job.sbatch)")
    add("--dry-run", action="store_true", help="write the script and print it, but do not submit it")
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
    add("--port", type=int, default=mpi.DEFAULT_PORT, help=f"MASTER_PORT for rank 0 (default {mpi.DEFAULT_PORT})")
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


def _command(args: argparse.Namespace, kind: str) -> list[str]:
    command = list(args.user_command)  # not `args.command`: that is the top-level subcommand's name
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError(f"give the command to run after '--', e.g. 'dlscale launch {kind} ... -- dlscale train --model resnet50'")
    return command


def run_slurm(args: argparse.Namespace) -> int:
    from dlscale.distributed import slurm

    job = slurm.batch_job(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, command=_command(args, "slurm"), script=args.script,
        output=args.output, job_name=args.job_name, time=args.time, partition=args.partition, account=args.account,
        cpus_per_task=args.cpus_per_task, extra=args.sbatch, port=args.port, nproc=args.nproc,
        requeue=args.requeue, signal_before=args.signal_before,
    )
    if args.dry_run:
        slurm.write(job)
        sys.stdout.write(job.text)
        print(f"wrote {job.script}; submit it from this folder: sbatch {shlex.quote(str(job.script))}", file=sys.stderr)
        return 0
    answer = slurm.submit(job)
    print(f"wrote {job.script}; per-rank logs will be in {job.log_dir}", file=sys.stderr)
    print(answer, flush=True)  # sbatch says "Submitted batch job 42"
    return 0


def run_mpi(args: argparse.Namespace) -> int:
    launch = mpi.prepare(
        np=args.np, command=_command(args, "mpi"), hosts=args.hosts, hostfile=args.hostfile, launcher=args.launcher,
        port=args.port, log_dir=args.log_dir, extra=args.mpi_arg,
    )
    if args.dry_run:
        print(shlex.join(launch.line), flush=True)
        return 0
    return mpi.run(launch, say=lambda line: print(f"dlscale: {line}", file=sys.stderr, flush=True))
