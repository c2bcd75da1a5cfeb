"""SLURM: the sbatch script that runs a command on several nodes, and its submission.

The script runs one task per node; each task starts torchrun's elastic agent, the agents
meet through torchrun's c10d rendezvous on the job's first node (the recipe of torchrun's
own SLURM examples), and each agent starts one worker per GPU (or ``nproc`` CPU workers on
a CPU-only cluster, with no gres request) with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* set.
torchrun writes each worker's stdout and stderr to its own file (``--log-dir``, ``--tee``)
and copies local rank 0 to the job's output file: under ``<run-dir>/logs`` when the
command has ``--run-dir``, else under the launch's own folder ``runs/<UTC-time>-slurm/logs``.

Time limits: for ``dlscale train`` the script asks for SIGUSR1 ahead of the limit
(``--signal=USR1@S``, to every process of the step), the agents pass it on to their workers,
and the run saves, stops and requeues the job (``training/requeue``); a command that
continues its own run when started again (``--run-dir DIR``, or ``--resume DIR``) is also
``--requeue``-able.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dlscale.distributed.job import check_port, check_positive, launch_dir, run_dir_of
from dlscale.errors import UserError


@dataclass(frozen=True)
class BatchJob:
    script: Path  # where the script is written
    text: str  # the script
    log_dir: str  # where torchrun writes every worker's logs
    output: str  # the job's output file (%j: the job id)


def batch_job(
    *,
    nodes: int,
    gpus_per_node: int,
    command: list[str],
    script: str | None = None,
    output: str | None = None,
    job_name: str = "dlscale",
    time: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    cpus_per_task: int | None = None,
    extra: list[str] | tuple[str, ...] = (),
    port: int | None = None,
    nproc: int | None = None,
    requeue: bool = True,
    signal_before: int = 90,
) -> BatchJob:
    """The script for ``command``, where it goes (``script``, else
    runs/<UTC-time>-slurm/job.sbatch) and where its logs and output will be."""
    check_positive(nodes, "--nodes")
    workers_per_node(gpus_per_node, nproc)
    if script:
        path = Path(script)
        folder = path.parent
    else:
        folder = launch_dir("slurm")
        path = folder / "job.sbatch"
    run_dir = run_dir_of(command)
    log_dir = str(Path(run_dir) / "logs") if run_dir else str(folder / "logs")
    output = output or str(folder / "slurm-%j.out")
    text = sbatch_script(
        nodes=nodes, gpus_per_node=gpus_per_node, command=command, log_dir=log_dir, output=output,
        job_name=job_name, time=time, partition=partition, account=account,
        cpus_per_task=cpus_per_task, extra=extra, port=port, script=str(path), nproc=nproc,
        requeue=requeue, signal_before=signal_before,
    )
    return BatchJob(script=path, text=text, log_dir=log_dir, output=output)


def _is_train(command: list[str]) -> bool:
    """``dlscale train ...`` or ``python -m dlscale train ...``."""
    program = Path(command[0]).name
    if program == "dlscale":
        return command[1:2] == ["train"]
    return bool(_PYTHON.fullmatch(program)) and command[1:4] == ["-m", "dlscale", "train"]


def resumable(command: list[str]) -> bool:
    """Whether a requeued job continues where this command stopped: ``dlscale train`` with
    ``--run-dir DIR`` (started again by a requeue, it continues that run), with ``--resume
    auto --run-dir DIR``, or with ``--resume DIR``."""
    if not _is_train(command):
        return False
    resume = None
    for i, word in enumerate(command):
        if word == "--resume" and i + 1 < len(command):
            resume = command[i + 1]
        elif word.startswith("--resume="):
            resume = word.split("=", 1)[1]
    if resume is None:  # a requeued job (SLURM_RESTART_COUNT > 0) continues the run in its --run-dir
        return run_dir_of(command) is not None
    return resume != "auto" or run_dir_of(command) is not None


def _torchrun_passes_signals() -> bool:
    """Whether this torch's torchrun has --signals-to-handle and --shutdown-timeout (recent
    releases), read from its source so that `dlscale launch` does not import torch. Without
    them the script asks for no signal: SIGUSR1 would kill torchrun's agents."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin:
        return False
    try:
        source = (Path(spec.origin).parent / "distributed" / "run.py").read_text()
        return "--signals-to-handle" in source and "--shutdown-timeout" in source
    except OSError:
        return False


def workers_per_node(gpus_per_node: int, nproc: int | None) -> int:
    """How many workers torchrun starts on each node: ``nproc``, else one per GPU. A CPU-only
    cluster (``--gpus-per-node 0``) must say how many (``--nproc``)."""
    if gpus_per_node < 0:
        raise UserError(f"--gpus-per-node must be at least 0 (0: a CPU-only cluster), got {gpus_per_node}")
    check_positive(nproc, "--nproc")
    if nproc is None and gpus_per_node == 0:
        raise UserError("--gpus-per-node 0 asks for no GPUs: give --nproc K, the CPU workers to start on each node")
    return nproc if nproc is not None else gpus_per_node


def write(job: BatchJob) -> None:
    """Write the script (never over an existing file) and create its output file's folder."""
    _write_script(job.script, job.text, Path(job.output).parent)


def submit(job: BatchJob) -> str:
    """Write the script and hand it to sbatch; what sbatch answered ("Submitted batch job 42")."""
    write(job)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"sbatch not found: submit {job.script} on the cluster's login node (from this folder: sbatch {job.script})")
    done = subprocess.run([sbatch, str(job.script)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise UserError(f"sbatch refused {job.script}: {reason}")
    return done.stdout.strip() or f"submitted {job.script}"


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
    nproc: int | None = None,
    requeue: bool = True,
    signal_before: int = 90,
) -> str:
    """The sbatch script: one task per node, each running torchrun with the c10d rendezvous
    and ``nproc`` workers (default: one per GPU; ``gpus_per_node=0``: CPU workers, no gres)."""
    check_positive(nodes, "--nodes")
    per_node = workers_per_node(gpus_per_node, nproc)
    check_positive(cpus_per_task, "--cpus-per-task")
    check_port(port, "--port")
    check_positive(signal_before, "--signal-before")
    # the signal for `dlscale train` (it saves and stops on SIGUSR1); the requeue only when
    # the command continues its own run when started again (--resume auto/DIR and --run-dir)
    warned = requeue and _is_train(command) and _torchrun_passes_signals()
    requeue = warned and resumable(command)
    target = torchrun_target(command)
    q = shlex.quote
    directives = [
        f"--job-name={_sbatch_value(job_name, '--job-name')}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
    ]
    if gpus_per_node:
        # --gres=gpu:G, not --gpus-per-node=G: gres works with every select plugin
        # (cons_res and cons_tres) and SLURM release; --gpus-per-node needs cons_tres.
        # None on a CPU-only cluster, which refuses any gpu gres ("Invalid generic resource").
        directives.append(f"--gres=gpu:{gpus_per_node}")
    if cpus_per_task:
        directives.append(f"--cpus-per-task={cpus_per_task}")
    if time:
        directives.append(f"--time={check_time(time)}")
    if partition:
        directives.append(f"--partition={_sbatch_value(partition, '--partition')}")
    if account:
        directives.append(f"--account={_sbatch_value(account, '--account')}")
    directives.append(f"--output={_sbatch_value(output, '--output')}")
    if warned:
        # SIGUSR1 to every process of the job step (torchrun's agents and their workers),
        # signal_before seconds ahead of the time limit, on SLURM's ~30 s polling: the workers
        # save after a step and stop
        directives.append(f"--signal=USR1@{signal_before}")
    if requeue:
        # the job may be requeued (`scontrol requeue`) and then resumes its run (--resume);
        # --open-mode=append: a requeued job adds to its output file instead of emptying it
        directives += ["--requeue", "--open-mode=append"]
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
        f"--nproc-per-node={per_node}",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$head_node:$port"',
        '--rdzv-id="$SLURM_JOB_ID"',
        '--log-dir="$log_dir"',
        "--tee=3",
        "--local-ranks-filter=0",
    ]
    if warned:
        # SIGUSR1 would kill an agent (its default action): the agents pass it on to their workers
        # instead, which save after a step and stop, and give them --signal-before seconds for it
        torchrun[1:1] = ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", f"--shutdown-timeout={signal_before}"]
    body = " \\\n    ".join([" ".join(srun) + " " + torchrun[0], *torchrun[1:], " ".join(q(w) for w in target)])
    lines = [
        "#!/bin/bash",
        f"# Written by `dlscale launch slurm`. Submit it from the folder it was written in: sbatch {q(script)}",
        "#",
        f"# One SLURM task per node; each starts torchrun's elastic agent, which starts {per_node} worker(s)"
        + (f" ({gpus_per_node} GPU(s) per node)." if gpus_per_node else " on the CPU (no GPUs asked for)."),
        "# The agents meet through torchrun's c10d rendezvous on the job's first node, which",
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
