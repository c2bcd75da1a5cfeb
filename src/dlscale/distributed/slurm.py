"""SLURM: the sbatch script that runs a command on several nodes, and its submission.

The script runs one task per node; each task starts torchrun's elastic agent, the agents
meet through torchrun's c10d rendezvous on the job's first node (the recipe of torchrun's
own SLURM examples), and each agent starts one worker per GPU with
RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* set. torchrun writes each worker's stdout and stderr
to its own file (``--log-dir``, ``--tee``) and copies local rank 0 to the job's output
file: under ``<run-dir>/logs`` when the command has ``--run-dir``, else under the
launch's own folder ``runs/<UTC-time>-slurm/logs``.
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
) -> BatchJob:
    """The script for ``command``, where it goes (``script``, else
    runs/<UTC-time>-slurm/job.sbatch) and where its logs and output will be."""
    check_positive(nodes, "--nodes")
    check_positive(gpus_per_node, "--gpus-per-node")
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
        cpus_per_task=cpus_per_task, extra=extra, port=port, script=str(path),
    )
    return BatchJob(script=path, text=text, log_dir=log_dir, output=output)


def submit(job: BatchJob) -> str:
    """Write the script and hand it to sbatch; what sbatch answered ("Submitted batch job 42")."""
    _write_script(job.script, job.text, Path(job.output).parent)
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
) -> str:
    """The sbatch script: one task per node, each running torchrun with the c10d rendezvous."""
    check_positive(nodes, "--nodes")
    check_positive(gpus_per_node, "--gpus-per-node")
    check_positive(cpus_per_task, "--cpus-per-task")
    check_port(port, "--port")
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
