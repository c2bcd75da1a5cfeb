"""A real SLURM on this machine, for the tests: munged, slurmctld and two slurmd (nodes n1
and n2, both 127.0.0.1), started in the foreground as child processes and stopped by PID.

No systemd is needed: every daemon gets its own socket, key, pid, state, spool and log
files under one temporary folder, and the SLURM commands find the cluster through
``SLURM_CONF`` (``Cluster.env``). The packages are Debian's ``slurmctld slurmd
slurm-client munge`` (``.ci/run`` installs them); the daemons must run as root.

    python tests/slurm_cluster.py    # bring one up by hand, print its SLURM_CONF, Ctrl-C stops it
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NODES = ("n1", "n2")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")


def unavailable() -> str | None:
    """Why a real SLURM cannot be brought up here, or None when it can (before /etc/hosts)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a real SLURM needs root (slurmd runs jobs as SlurmUser=root)"
    missing = [p for p in PROGRAMS if _which(p) is None]
    if missing:
        return (f"no {', '.join(missing)}: apt-get install --no-install-recommends slurmctld slurmd "
                "slurm-client munge (as .ci/run does) to run the real-SLURM tests")
    return None


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")


def names_resolve() -> str | None:
    """Make n1 and n2 resolve to 127.0.0.1 (job scripts and torchrun's rendezvous use the node
    names); an /etc/hosts line is added when missing. Why it cannot be done, or None."""
    def resolved() -> bool:
        try:
            return all(socket.gethostbyname(n) == "127.0.0.1" for n in NODES)
        except OSError:
            return False

    if resolved():
        return None
    try:
        with open("/etc/hosts", "a") as hosts:
            hosts.write(f"\n127.0.0.1 {' '.join(NODES)}  # added by dlscale's tests (tests/slurm_cluster.py)\n")
    except OSError as exc:
        return f"the node names {', '.join(NODES)} do not resolve and /etc/hosts is not writable ({exc.strerror})"
    if not resolved():
        return f"the node names {', '.join(NODES)} do not resolve to 127.0.0.1 even with an /etc/hosts line"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 now (held together while picked, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Cluster:
    root: Path
    conf: Path
    env: dict[str, str]  # os.environ with SLURM_CONF pointing at this cluster
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o J`` as a dict (JobState, ExitCode, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, timeout: float = 240) -> dict[str, str]:
        """Poll until the job has ended (any state but PENDING/RUNNING/...); its fields."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"):
                return info
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s: {info}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The daemons' logs, for a failure message."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this cluster started (by PID, newest first)."""
        if any(p.poll() is None for p in self.processes):
            self.run("scancel", "--full", "--user", "root", check=False, timeout=10)
            deadline = time.monotonic() + 20  # let slurmd end the jobs' steps before it goes
            while time.monotonic() < deadline:
                queue = self.run("squeue", "--noheader", "--format=%i", check=False, timeout=10)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.processes.clear()


def _die_with_parent() -> None:
    """In the daemon, before exec: SIGTERM when the process that started it dies (a test
    run killed outright leaves no daemons behind). Linux only; elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _node_hardware() -> tuple[int, int]:
    """CPUs and RealMemory (MiB) of this machine, as ``slurmd -C`` reports them."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    cpus = re.search(r"\bCPUs=(\d+)", out)
    memory = re.search(r"\bRealMemory=(\d+)", out)
    return int(cpus.group(1)) if cpus else (os.cpu_count() or 1), int(memory.group(1)) if memory else 1000


def slurm_conf(root: Path, ctld_port: int, node_ports: list[int], cpus: int, memory_mb: int, munge_socket: Path) -> str:
    nodes = [
        f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs={cpus} "
        f"RealMemory={memory_mb} State=UNKNOWN"
        for name, port in zip(NODES, node_ports)
    ]
    return "\n".join([
        "ClusterName=dlscaletest",
        f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/builtin",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "MinJobAge=600",
        "KillWait=5",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}/%n",
        f"SlurmctldPidFile={root / 'run'}/slurmctld.pid",
        f"SlurmdPidFile={root / 'run'}/slurmd.%n.pid",
        f"SlurmctldLogFile={root / 'log'}/slurmctld.log",
        f"SlurmdLogFile={root / 'log'}/slurmd.%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        *nodes,
        f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        "",
    ])


def start(root: Path | None = None, ready_timeout: float = 60) -> Cluster:
    """Bring up munged, slurmctld and the two slurmd; return once both nodes are idle.
    Raises RuntimeError (with the daemons' logs) when the cluster does not come up."""
    root = Path(root or tempfile.mkdtemp(prefix="dlscale-slurm-"))
    for sub in ("state", "spool", "run", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in NODES:
        (root / "spool" / name).mkdir(exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    munge_socket = root / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))  # what `mungekey --create` writes; older munge has no mungekey
    os.chmod(key, 0o600)

    ctld_port, *node_ports = free_ports(1 + len(NODES))
    cpus, memory_mb = _node_hardware()
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, ctld_port, node_ports, cpus, memory_mb, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root=root, conf=conf, env=env)

    def daemon(*argv: str, log: str) -> subprocess.Popen:
        out = open(root / "log" / log, "ab")
        try:
            process = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True,  # a Ctrl-C in the test's terminal does not reach it
                                       preexec_fn=_die_with_parent)
        finally:
            out.close()
        cluster.processes.append(process)
        return process

    try:
        daemon(_which("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
               f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'munged.seed'}",
               f"--log-file={root / 'log' / 'munged.log'}", log="munged.out.log")
        _wait_for(lambda: munge_socket.exists(), 10, "munged's socket", cluster)
        daemon(_which("slurmctld"), "-D", "-i", "-f", str(conf), log="slurmctld.out.log")
        _wait_for(lambda: cluster.run("scontrol", "ping", check=False).returncode == 0, 20, "slurmctld", cluster)
        for name in NODES:
            daemon(_which("slurmd"), "-D", "-N", name, "-f", str(conf), log=f"slurmd.{name}.out.log")

        def idle() -> bool:
            out = cluster.run("sinfo", "--noheader", "--Node", "--format=%N %T", check=False).stdout
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            return all(states.get(name, "").rstrip("*") == "idle" for name in NODES)

        _wait_for(idle, ready_timeout, "both nodes idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(ready, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(map(str, dead))} exited" if dead else f"not within {timeout:.0f} s"
            raise RuntimeError(f"SLURM did not come up: waiting for {what}, {why}\n{cluster.logs()}")
        time.sleep(0.2)


if __name__ == "__main__":
    reason = unavailable() or names_resolve()
    if reason:
        raise SystemExit(reason)
    started = time.monotonic()
    c = start()
    print(f"up in {time.monotonic() - started:.1f} s: export SLURM_CONF={c.conf}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
