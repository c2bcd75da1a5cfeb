"""`dlscale launch slurm` and `dlscale launch mpi`.

The commands run in-process through ``dlscale.cli.main`` (with ``launch`` added to the
parser when cli.py does not register it yet), so the user-error contract is the real one.
No SLURM cluster is reachable here: the sbatch script is checked as text, by ``bash -n``,
with a fake ``sbatch`` on PATH, and by running it with bash under fake ``scontrol`` and
``srun`` so that the real torchrun does the c10d rendezvous and writes per-rank logs.
MPI is checked for real when ``mpirun`` is installed: two ranks started by
``dlscale launch mpi`` report what ``dlscale.distributed.env.detect`` read from the launcher.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dlscale import cli
from dlscale.distributed import mpi, slurm

PYTHON_DIR = str(Path(sys.executable).parent)  # the venv's bin: torchrun and python
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# --------------------------------------------------------------------------- helpers

@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    """`dlscale.cli.main` runs in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    for allocation in ("SLURM_JOB_NODELIST", "PBS_NODEFILE"):  # as if run outside any batch job
        monkeypatch.delenv(allocation, raising=False)


@pytest.fixture
def dlscale(in_tmp, capsys):
    """`dlscale(*argv)` -> (exit code, stdout, stderr)."""

    def call(*argv: str) -> tuple[int, str, str]:
        rc = cli.main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def assert_user_error(rc: int, out: str, err: str, *fragments: str) -> str:
    """Exit 2, nothing on stdout, one `error: ...` line on stderr naming the problem."""
    assert rc == 2, f"exit code {rc}; stderr:\n{err}"
    assert out == "", out
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def fake_program(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def free_port_from_job_id() -> tuple[int, int]:
    """A SLURM job id whose derived port (15000 + id % 10000) is free here."""
    for job_id in range(4321, 4321 + 10000, 97):
        port = 15000 + job_id % 10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return job_id, port
    pytest.skip("no free port in 15000-24999")


SLURM_BASE = ("launch", "slurm", "--nodes", "2", "--gpus-per-node", "4")


# --------------------------------------------------------------------------- slurm: the script


def test_slurm_dry_run_prints_the_script_and_writes_the_file_it_names(dlscale, tmp_path):
    rc, out, err = dlscale(*SLURM_BASE, "--time", "02:00:00", "--partition", "gpu", "--account", "proj42",
                           "--dry-run", "--", "dlscale", "train", "--model", "resnet50")
    assert rc == 0, err
    # the script, nothing else: the one file it tells the user to submit (issue 12), never submitted
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1 and re.fullmatch(r"runs/\d{8}T\d{6}Z-slurm/job\.sbatch", str(written[0].relative_to(tmp_path)))
    assert written[0].read_text() == out
    assert err.strip() == f"wrote {written[0].relative_to(tmp_path)}; submit it from this folder: sbatch {written[0].relative_to(tmp_path)}"
    assert f"sbatch {written[0].relative_to(tmp_path)}" in out  # the script's own comment names the same file
    lines = out.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=2", "--ntasks-per-node=1", "--gres=gpu:4", "--time=02:00:00",
                      "--partition=gpu", "--account=proj42", "--job-name=dlscale"):
        assert f"#SBATCH {directive}" in lines
    assert any(re.fullmatch(r"#SBATCH --output=runs/\d{8}T\d{6}Z-slurm/slurm-%j\.out", line) for line in lines)
    # sbatch reads directives only up to the first command line
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))

    assert "set -euo pipefail" in lines
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in out
    launch_line = " ".join(out.split("\\\n"))
    words = shlex.split(launch_line[launch_line.index("srun"):])
    assert words[0] == "srun" and "torchrun" in words
    torchrun = words[words.index("torchrun"):]
    for flag in ("--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=$head_node:$port",
                 "--rdzv-id=$SLURM_JOB_ID", "--nnodes=$SLURM_NNODES", "--tee=3"):
        assert flag in torchrun, flag
    assert torchrun[-5:] == ["-m", "dlscale", "train", "--model", "resnet50"]
    assert "port=$((15000 + SLURM_JOB_ID % 10000))" in out


def test_slurm_script_quotes_user_values_and_passes_bash_syntax_check(dlscale, tmp_path):
    rc, out, err = dlscale(*SLURM_BASE, "--partition", "gpu a100", "--job-name", "it's mine",
                           "--cpus-per-task", "32", "--sbatch=--mem=0", "--sbatch", "#SBATCH --exclusive",
                           "--dry-run", "--", "dlscale", "train", "--data", "my data/set", "--run-dir", "runs/x y; rm -rf ~")
    assert rc == 0, err
    assert "#SBATCH --partition='gpu a100'" in out
    assert "#SBATCH --cpus-per-task=32" in out and "--cpus-per-task=32 torchrun" in out
    assert "#SBATCH --mem=0" in out and "#SBATCH --exclusive" in out
    launch_line = " ".join(out.split("\\\n"))
    words = shlex.split(launch_line[launch_line.index("srun"):])
    assert words[-7:] == ["-m", "dlscale", "train", "--data", "my data/set", "--run-dir", "runs/x y; rm -rf ~"]
    assert "log_dir='runs/x y; rm -rf ~/logs'" in out  # per-rank logs go into the run directory
    script = tmp_path / "job.sbatch"
    script.write_text(out)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_slurm_cpu_only_cluster_asks_for_no_gres(dlscale, tmp_path):
    """--gpus-per-node 0 --nproc K: K CPU workers on each node and no gres line, which a
    cluster without GPUs would refuse (the real sbatch does: tests/distributed/test_slurm.py)."""
    rc, out, err = dlscale("launch", "slurm", "--nodes", "3", "--gpus-per-node", "0", "--nproc", "4",
                           "--script", "cpu.sbatch", "--dry-run", "--", "dlscale", "train")
    assert rc == 0, err
    assert "gres" not in out
    assert not [line for line in out.splitlines() if line.startswith("#SBATCH") and "gpu" in line.lower()]
    assert "#SBATCH --nodes=3" in out.splitlines()
    assert "--nproc-per-node=4" in out and "on the CPU" in out
    assert (tmp_path / "cpu.sbatch").read_text() == out
    check = subprocess.run(["bash", "-n", str(tmp_path / "cpu.sbatch")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("gpus, nproc, workers", [("4", None, 4), ("4", "2", 2), ("1", "8", 8)])
def test_slurm_nproc_defaults_to_one_worker_per_gpu(dlscale, gpus, nproc, workers):
    rc, out, err = dlscale("launch", "slurm", "--nodes", "2", "--gpus-per-node", gpus, *(["--nproc", nproc] if nproc else []),
                           "--dry-run", "--", "dlscale", "train")
    assert rc == 0, err
    assert f"#SBATCH --gres=gpu:{gpus}" in out.splitlines()
    assert f"--nproc-per-node={workers} " in out


@pytest.mark.parametrize("flags, command, signal, requeue", [
    ((), ("dlscale", "train", "--resume", "auto", "--run-dir", "r"), True, True),
    ((), ("python", "-m", "dlscale", "train", "--resume=runs/old"), True, True),
    ((), ("dlscale", "train", "--run-dir", "r"), True, True),  # requeued (SLURM_RESTART_COUNT > 0), it continues its run
    ((), ("dlscale", "train", "--resume", "auto"), True, False),  # which run is "newest" may change meanwhile
    ((), ("python", "train.py", "--resume", "auto", "--run-dir", "r"), False, False),  # not ours: may not save on USR1
    (("--no-requeue",), ("dlscale", "train", "--resume", "auto", "--run-dir", "r"), False, False),
    (("--signal-before", "300"), ("dlscale", "train", "--resume", "auto", "--run-dir", "r"), True, True),
])
def test_slurm_time_limit_signal_and_requeue(dlscale, flags, command, signal, requeue):
    """`dlscale train` saves and stops on SIGUSR1, which SLURM sends ahead of the time limit to
    every process of the step: torchrun's agents pass it on instead of dying of it. A command
    that continues its own run when started again is also requeueable."""
    rc, out, err = dlscale(*SLURM_BASE, *flags, "--dry-run", "--", *command)
    assert rc == 0, err
    lines = out.splitlines()
    before = flags[1] if flags[:1] == ("--signal-before",) else "90"
    assert (f"#SBATCH --signal=USR1@{before}" in lines) is signal
    assert ("--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in out) is signal
    assert (f"--shutdown-timeout={before}" in out) is signal
    assert ("#SBATCH --requeue" in lines) is requeue and ("#SBATCH --open-mode=append" in lines) is requeue
    launch_line = " ".join(out.split("\\\n"))
    assert shlex.split(launch_line[launch_line.index("srun"):])[-len(command) + 1:] == list(command[1:])


@pytest.mark.parametrize("command, target", [
    (["python", "-m", "pkg.train", "--lr", "0.1"], ["-m", "pkg.train", "--lr", "0.1"]),
    (["python3", "-u", "train.py", "--lr", "0.1"], ["train.py", "--lr", "0.1"]),
    (["/usr/bin/python3.11", "scripts/train.py"], ["scripts/train.py"]),
    (["/opt/venv/bin/dlscale", "train"], ["-m", "dlscale", "train"]),
])
def test_python_commands_map_onto_torchrun(command, target):
    assert slurm.torchrun_target(command) == target


@pytest.mark.parametrize("argv, fragments", [
    ((*SLURM_BASE, "--dry-run"), ("after '--'",)),
    ((*SLURM_BASE, "--dry-run", "--"), ("after '--'",)),
    (("launch", "slurm", "--nodes", "0", "--gpus-per-node", "4", "--dry-run", "--", "dlscale", "train"), ("--nodes",)),
    (("launch", "slurm", "--nodes", "1", "--gpus-per-node", "0", "--dry-run", "--", "dlscale", "train"), ("--gpus-per-node",)),
    (("launch", "slurm", "--nodes", "1", "--gpus-per-node", "0", "--dry-run", "--", "dlscale", "train"), ("--nproc",)),
    (("launch", "slurm", "--nodes", "1", "--gpus-per-node", "-1", "--dry-run", "--", "dlscale", "train"), ("--gpus-per-node",)),
    (("launch", "slurm", "--nodes", "1", "--gpus-per-node", "0", "--nproc", "0", "--dry-run", "--", "dlscale", "train"),
     ("--nproc",)),
    ((*SLURM_BASE, "--signal-before", "0", "--dry-run", "--", "dlscale", "train"), ("--signal-before",)),
    ((*SLURM_BASE, "--time", "2h", "--dry-run", "--", "dlscale", "train"), ("--time", "HH:MM:SS")),
    ((*SLURM_BASE, "--time", "01:75:00", "--dry-run", "--", "dlscale", "train"), ("--time",)),
    ((*SLURM_BASE, "--dry-run", "--", "bash", "run.sh"), ("'dlscale ...'", "bash")),
    ((*SLURM_BASE, "--dry-run", "--", "python", "-c", "print(1)"), ("python -m MODULE",)),
    ((*SLURM_BASE, "--dry-run", "--", "torchrun", "train.py"), ("torchrun",)),
    ((*SLURM_BASE, "--sbatch=mem=0", "--dry-run", "--", "dlscale", "train"), ("--sbatch",)),
    (("launch", "slurm", "--gpus-per-node", "4", "--", "dlscale"), ("--nodes",)),
    (("launch",), ("dlscale launch slurm",)),
])
def test_slurm_user_mistakes(dlscale, tmp_path, argv, fragments):
    assert_user_error(*dlscale(*argv), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_unknown_flag_before_the_command_is_one_error_line(dlscale):
    """A flag of ours that does not exist stops at the parser (it is not taken as the command)."""
    assert_user_error(*dlscale(*SLURM_BASE, "--bogus", "--dry-run", "--", "dlscale", "train"),
                      "--bogus", "dlscale launch")


def test_the_command_keeps_its_own_flags(dlscale):
    """Without '--' too, everything from the command's first word on belongs to the command."""
    rc, out, err = dlscale(*SLURM_BASE, "--dry-run", "dlscale", "train", "--nodes", "3", "--dry-run")
    assert rc == 0, err
    assert out.rstrip().endswith("-m dlscale train --nodes 3 --dry-run")


@pytest.mark.parametrize("value", ["02:00:00", "30", "30:00", "1-12", "1-12:30", "2-00:00:00", "100:00:00"])
def test_slurm_time_formats_accepted(value):
    assert slurm.check_time(value) == value


# --------------------------------------------------------------------------- slurm: submitting


def test_slurm_without_sbatch_writes_the_script_and_says_where(dlscale, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    rc, out, err = dlscale(*SLURM_BASE, "--", "dlscale", "train")
    line = assert_user_error(rc, out, err, "sbatch not found", "login node")
    scripts = list(tmp_path.glob("runs/*-slurm/job.sbatch"))
    assert len(scripts) == 1 and str(scripts[0].relative_to(tmp_path)) in line
    assert scripts[0].read_text().startswith("#!/bin/bash")


def test_slurm_submits_with_sbatch_and_prints_the_job_id(dlscale, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "sbatch", f'echo "$@" > {shlex.quote(str(tmp_path / "sbatch-args"))}\necho "Submitted batch job 42"')
    monkeypatch.setenv("PATH", str(bin_dir))
    rc, out, err = dlscale(*SLURM_BASE, "--script", "jobs/train.sbatch", "--", "dlscale", "train")
    assert rc == 0, err
    assert out.strip() == "Submitted batch job 42"
    assert (tmp_path / "sbatch-args").read_text().strip() == "jobs/train.sbatch"
    assert (tmp_path / "jobs" / "train.sbatch").is_file()
    assert "#SBATCH --output=jobs/slurm-%j.out" in (tmp_path / "jobs" / "train.sbatch").read_text()


def test_slurm_sbatch_refusal_is_one_error_line(dlscale, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "sbatch", 'echo "sbatch: error: invalid partition specified: gpux" >&2\nexit 1')
    monkeypatch.setenv("PATH", str(bin_dir))
    assert_user_error(*dlscale(*SLURM_BASE, "--partition", "gpux", "--", "dlscale", "train"),
                      "sbatch refused", "invalid partition")


def test_slurm_never_overwrites_a_script(dlscale, tmp_path):
    (tmp_path / "job.sbatch").write_text("mine\n")
    assert_user_error(*dlscale(*SLURM_BASE, "--script", "job.sbatch", "--", "dlscale", "train"), "already exists")
    assert (tmp_path / "job.sbatch").read_text() == "mine\n"


def test_slurm_script_runs_torchrun_rendezvous_under_fake_srun(tmp_path):
    """Run the generated script with bash as a one-node job, `srun` and `scontrol` faked:
    the real torchrun accepts every flag, the c10d rendezvous forms on the "head node",
    both workers see torchrun's variables, each worker's output lands in its own log file,
    and local rank 0's output reaches the job's console."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, dataclasses\n"
        "from dlscale.distributed.env import detect\n"
        "print('PROBE ' + json.dumps(dataclasses.asdict(detect())), flush=True)\n"
    )
    text = slurm.sbatch_script(nodes=1, gpus_per_node=2, command=["python", str(probe)],
                                log_dir=str(tmp_path / "logs"), output=str(tmp_path / "slurm-%j.out"))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "scontrol", 'echo localhost')
    # srun: drop its own options, then run the one task of this one-node job
    fake_program(bin_dir, "srun", 'while [ "${1#--}" != "$1" ]; do shift; done\n'
                                  "SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 SLURM_NTASKS=1 exec \"$@\"")
    job_id, port = free_port_from_job_id()
    env = {"PATH": os.pathsep.join([str(bin_dir), PYTHON_DIR, "/usr/bin", "/bin"]), "HOME": str(tmp_path),
           "SLURM_JOB_ID": str(job_id), "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"rendezvous localhost:{port}" in done.stderr

    console = [json.loads(line.split("PROBE ", 1)[1]) for line in (done.stdout + done.stderr).splitlines() if "PROBE " in line]
    assert [c["local_rank"] for c in console] == [0]  # --local-ranks-filter=0: local rank 0 on the console

    logs = sorted((tmp_path / "logs").glob(f"{job_id}_*/attempt_0/*/stdout.log"))
    assert [p.parent.name for p in logs] == ["0", "1"]
    seen = [json.loads(p.read_text().split("PROBE ", 1)[1].splitlines()[0]) for p in logs]
    assert [(s["kind"], s["rank"], s["local_rank"], s["world_size"]) for s in seen] == [
        ("torchrun", 0, 0, 2), ("torchrun", 1, 1, 2)]
    assert len({(s["master_addr"], s["master_port"]) for s in seen}) == 1


# --------------------------------------------------------------------------- mpi: the line


def test_mpi_dry_run_open_mpi(dlscale):
    rc, out, err = dlscale("launch", "mpi", "--np", "2", "--launcher", "openmpi", "--dry-run",
                           "--", "dlscale", "train", "--run-dir", "runs/a b")
    assert rc == 0, err
    words = shlex.split(out)
    root = ["--allow-run-as-root"] if ROOT else []
    assert words == ["mpirun", "-np", "2", "-x", "MASTER_ADDR=127.0.0.1", "-x", "MASTER_PORT=29500", *root,
                     "--bind-to", "none", "--output-filename", "runs/a b/logs",
                     "dlscale", "train", "--run-dir", "runs/a b"]


def test_mpi_dry_run_open_mpi_on_hosts(dlscale, tmp_path):
    rc, out, err = dlscale("launch", "mpi", "--np", "8", "--hosts", "node1:4,node2:4", "--launcher", "openmpi",
                           "--port", "29600", "--mpi-arg=--mca", "--mpi-arg=btl_tcp_if_include", "--mpi-arg=ib0",
                           "--dry-run", "--", "dlscale", "train")
    assert rc == 0, err
    words = shlex.split(out)
    assert words[:5] == ["mpirun", "-np", "8", "--host", "node1:4,node2:4"]
    assert "MASTER_ADDR=node1" in words and "MASTER_PORT=29600" in words and "PATH" in words
    log_dir = words[words.index("--output-filename") + 1]
    assert re.fullmatch(r"runs/\d{8}T\d{6}Z-mpi/logs", log_dir)
    assert words[-5:] == ["--mca", "btl_tcp_if_include", "ib0", "dlscale", "train"]
    assert list(tmp_path.iterdir()) == []  # a dry run creates nothing


def test_mpi_dry_run_mpich(dlscale):
    rc, out, err = dlscale("launch", "mpi", "--np", "4", "--hosts", "n1,n2", "--launcher", "mpich", "--dry-run",
                           "--", "dlscale", "train", "--model", "resnet18")
    assert rc == 0, err
    assert shlex.split(out) == ["mpiexec", "-n", "4", "-hosts", "n1,n2", "-genv", "MASTER_ADDR", "n1",
                                "-genv", "MASTER_PORT", "29500", "dlscale", "train", "--model", "resnet18"]


def test_mpi_inside_a_slurm_allocation_names_its_first_node(dlscale, monkeypatch):
    """`mpirun` with no hosts inside sbatch spreads the ranks over the allocation, so
    127.0.0.1 would be wrong for the ranks on the other nodes."""
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-04]")
    rc, out, err = dlscale("launch", "mpi", "--np", "8", "--launcher", "openmpi", "--dry-run", "--", "dlscale", "train")
    assert rc == 0, err
    assert "MASTER_ADDR=gpu03" in shlex.split(out)
    monkeypatch.setenv("SLURM_JOB_NODELIST", socket.gethostname())  # a one-node allocation: this machine
    rc, out, err = dlscale("launch", "mpi", "--np", "2", "--launcher", "openmpi", "--dry-run", "--", "dlscale", "train")
    assert "MASTER_ADDR=127.0.0.1" in shlex.split(out)


def test_mpi_hostfile_names_the_master(dlscale, tmp_path):
    (tmp_path / "hosts").write_text("# our nodes\n\ngpu07 slots=4\ngpu08 slots=4\n")
    rc, out, err = dlscale("launch", "mpi", "--np", "8", "--hostfile", "hosts", "--launcher", "mpich", "--dry-run",
                           "--", "dlscale", "train")
    assert rc == 0, err
    words = shlex.split(out)
    assert words[3:5] == ["-f", "hosts"] and words[words.index("MASTER_ADDR") + 1] == "gpu07"


@pytest.mark.parametrize("version, flavour", [
    ("mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/", "openmpi"),
    ("HYDRA build details:\n    Version: 4.0.2", "mpich"),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.10", "mpich"),
])
def test_mpi_flavour_from_mpirun_version(dlscale, tmp_path, monkeypatch, version, flavour):
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "mpirun", f"printf '%s\\n' {shlex.quote(version)}")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert mpi.mpi_flavour("auto") == (flavour, str(bin_dir / "mpirun"))
    rc, out, err = dlscale("launch", "mpi", "--np", "2", "--dry-run", "--", "dlscale", "train")
    assert rc == 0, err
    assert out.split()[:3] == (["mpirun", "-np", "2"] if flavour == "openmpi" else ["mpirun", "-n", "2"])


@pytest.mark.parametrize("argv, fragments", [
    (("launch", "mpi", "--np", "2", "--dry-run", "--", "dlscale", "train"), ("no mpirun or mpiexec", "openmpi-bin", "MPICH")),
    (("launch", "mpi", "--np", "2", "--launcher", "openmpi", "--", "dlscale", "train"), ("mpirun not found", "openmpi-bin")),
    (("launch", "mpi", "--np", "0", "--launcher", "openmpi", "--dry-run", "--", "dlscale"), ("--np",)),
    (("launch", "mpi", "--np", "2", "--launcher", "openmpi", "--dry-run"), ("after '--'",)),
    (("launch", "mpi", "--np", "2", "--launcher", "openmpi", "--port", "0", "--dry-run", "--", "x"), ("--port",)),
    (("launch", "mpi", "--np", "2", "--launcher", "mpich", "--hostfile", "nope", "--dry-run", "--", "x"), ("--hostfile",)),
])
def test_mpi_user_mistakes(dlscale, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert_user_error(*dlscale(*argv), *fragments)


def test_mpi_unknown_launcher_asks_for_launcher_flag(dlscale, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "mpirun", "echo 'some other mpirun 1.0'")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert_user_error(*dlscale("launch", "mpi", "--np", "2", "--dry-run", "--", "dlscale"), "--launcher")


# --------------------------------------------------------------------------- mpi: for real

needs_mpirun = pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="no mpirun on PATH (apt-get install openmpi-bin to run this check)"
)


@needs_mpirun
def test_mpi_real_ranks_read_the_launchers_variables(in_tmp, tmp_path, capfd):
    """Two ranks started by mpirun each run `python -c`, which prints what
    dlscale.distributed.env.detect() reads from the real launcher's variables."""
    flavour, _ = mpi.mpi_flavour("auto")
    extra = ["--mpi-arg=--oversubscribe"] if flavour == "openmpi" and (os.cpu_count() or 1) < 2 else []
    code = ("import json, dataclasses; from dlscale.distributed.env import detect; "
            "print('PROBE ' + json.dumps(dataclasses.asdict(detect())), flush=True)")
    rc = cli.main(["launch", "mpi", "--np", "2", *extra, "--", sys.executable, "-c", code, "--run-dir", "run"])
    out, err = capfd.readouterr()
    assert rc == 0, out + err
    # the two ranks share one stdout: a line of one may land inside the other's, so each object
    # is read where its marker starts, not line by line
    decoder = json.JSONDecoder()
    seen = sorted((decoder.raw_decode(part)[0] for part in out.split("PROBE ")[1:]), key=lambda s: s["rank"])
    assert [(s["kind"], s["rank"], s["world_size"], s["local_world_size"]) for s in seen] == [
        ("mpi", 0, 2, 2), ("mpi", 1, 2, 2)]
    assert {(s["master_addr"], s["master_port"]) for s in seen} == {("127.0.0.1", 29500)}
    if flavour == "openmpi":  # each rank's output also in its own file under the run directory
        logs = sorted((tmp_path / "run" / "logs").glob("*/rank.*/stdout"))
        assert [p.parent.name for p in logs] == ["rank.0", "rank.1"]
        assert all("PROBE " in p.read_text() for p in logs)


@needs_mpirun
def test_mpi_real_exit_code_passes_through(in_tmp, capfd):
    flavour, _ = mpi.mpi_flavour("auto")
    extra = ["--mpi-arg=--oversubscribe"] if flavour == "openmpi" else []
    rc = cli.main(["launch", "mpi", "--np", "1", *extra, "--log-dir", "logs", "--", sys.executable, "-c",
                   "import sys; sys.exit(3)"])
    capfd.readouterr()
    assert rc == 3
