"""Which launcher started us and what rank we are: one small interface over torchrun,
SLURM, MPI and a plain process.

``detect()`` reads the environment a launcher left behind and answers, in
torch.distributed's words, with a :class:`ClusterEnv`: this process's rank, local rank,
world size, local world size, node rank, and the master address and port that
``init_process_group("env://")`` needs (``torch_env`` turns it into those variables).
It is a pure function of the mapping it is given (``os.environ`` by default): it never
opens a socket, runs a program or writes a variable.

The launchers are probed in this order; the first that matches wins:

1. **torchrun** (``torch.distributed.run``, the elastic agent) when
   ``TORCHELASTIC_RUN_ID`` is set, or ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are
   all set. Its variables are read as they are: ``RANK``, ``LOCAL_RANK``,
   ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` (default: ``WORLD_SIZE``, one node),
   ``GROUP_RANK`` (default: ``RANK // LOCAL_WORLD_SIZE``), ``MASTER_ADDR`` (default
   127.0.0.1), ``MASTER_PORT`` (default 29500). First, because a worker that torchrun
   started inside a SLURM job or an MPI rank also carries that launcher's variables,
   which describe the torchrun agent, not the worker.

2. **An MPI launcher's own variables** (``mpirun``/``mpiexec`` set them; ``srun``
   does not):

   - Open MPI: ``OMPI_COMM_WORLD_RANK``, ``_SIZE``, ``_LOCAL_RANK``, ``_LOCAL_SIZE``;
   - MVAPICH (``mpirun_rsh``): ``MV2_COMM_WORLD_RANK``, ``_SIZE``, ``_LOCAL_RANK``,
     ``_LOCAL_SIZE``;
   - MPICH and Intel MPI (the Hydra launcher): ``PMI_RANK``, ``PMI_SIZE`` with
     ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``.

   Before SLURM, because ``mpirun`` inside an ``sbatch`` allocation starts its
   daemons with ``srun`` (one task per node), so every rank also inherits
   ``SLURM_PROCID``/``SLURM_NTASKS`` of that daemon step: those count nodes, not ranks.

3. **SLURM** when ``SLURM_PROCID`` and ``SLURM_NTASKS`` are set and the job step has
   more than one task (``SLURM_STEP_NUM_TASKS``, else ``SLURM_NTASKS``, > 1). A
   one-task step (``srun torchrun ...`` on one node, an ``salloc`` shell, the batch
   script itself) is not a cluster of workers: it falls through (to local, or to
   torchrun's variables in the workers, which are probed first anyway).

   - rank ``SLURM_PROCID``, local rank ``SLURM_LOCALID``, node rank ``SLURM_NODEID``;
   - local world size: this node's entry of ``SLURM_STEP_TASKS_PER_NODE`` (else
     ``SLURM_TASKS_PER_NODE``, else ``SLURM_NTASKS_PER_NODE``), whose compressed form
     ``2(x3),1`` means 2, 2, 2, 1 tasks on nodes 0..3;
   - master address: ``MASTER_ADDR`` when the user exported one (as Lightning's SLURM
     environment also honours it), else the first host of ``SLURM_STEP_NODELIST``
     (else ``SLURM_NODELIST``, else ``SLURM_JOB_NODELIST``), expanded from SLURM's
     compressed form by :func:`~dlscale.distributed.hostlist.expand_hostlist` (task 0 runs on the step's first node);
   - master port: ``MASTER_PORT``, else derived from the job id the way Lightning's
     ``SLURMEnvironment`` does it, 15000 + the last four digits of ``SLURM_JOB_ID``, so
     two jobs sharing a node do not collide and every task computes the same port.

4. **Generic PMI/PMIx**, which ``srun``'s MPI plugins also set (hence after SLURM):
   ``PMI_RANK``/``PMI_SIZE`` with ``PMI_LOCAL_RANK``/``PMI_LOCAL_SIZE`` (Cray PALS
   ``mpiexec``), or ``PMIX_RANK`` with the size from ``PMI_SIZE``.

5. **local**: one process, rank 0 of 1, 127.0.0.1, ``MASTER_PORT`` or 29500.

For every MPI kind (2 and 4): a one-process launch is reported as local, like a
one-task SLURM step. Where no local rank/size is given, the job is taken to be on one
node. The node rank is ``rank // local_world_size`` (MPI launchers place ranks on nodes
in blocks by default). The master address is ``MASTER_ADDR`` when set, else 127.0.0.1
for a job on one node; a job over several nodes without ``MASTER_ADDR`` is an error,
because no MPI variable names rank 0's host (``dlscale launch mpi`` passes it:
``-x MASTER_ADDR=...`` for Open MPI, ``-genv MASTER_ADDR ...`` for MPICH/Intel MPI).
The port is ``MASTER_PORT`` or 29500.

A malformed value (a rank that is not an integer, a rank not below the world size, a
host list that does not parse) raises :class:`~dlscale.errors.UserError` naming the
variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dlscale.distributed.hostlist import expand_hostlist, parse_tasks_per_node
from dlscale.errors import UserError

DEFAULT_PORT = 29500
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ClusterEnv:
    """This process's place in the job, in torch.distributed's terms."""

    kind: str  # "torchrun" | "slurm" | "mpi" | "local"
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int


def torch_env(env: ClusterEnv) -> dict[str, str]:
    """The variables ``torch.distributed.init_process_group("env://")`` reads (and that
    torchrun gives its workers), for ``os.environ.update``."""
    return {
        "RANK": str(env.rank),
        "LOCAL_RANK": str(env.local_rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_WORLD_SIZE": str(env.local_world_size),
        "GROUP_RANK": str(env.node_rank),
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
    }


def detect(environ: Mapping[str, str] | None = None) -> ClusterEnv:
    """Which launcher started this process, and this process's rank in it (see the
    module docstring for the order in which launchers are probed)."""
    env = os.environ if environ is None else environ
    for probe in (_torchrun, _mpi_launcher, _slurm, _pmi):
        found = probe(env)
        if found is not None:
            return found
    return _local(env)


# --------------------------------------------------------------------------- probes


def _torchrun(env: Mapping[str, str]) -> ClusterEnv | None:
    if "TORCHELASTIC_RUN_ID" not in env and not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    world = _int(env, "WORLD_SIZE", minimum=1)
    rank = _int(env, "RANK")
    local_rank = _int(env, "LOCAL_RANK")
    local_world = _int(env, "LOCAL_WORLD_SIZE", default=world, minimum=1)
    node_rank = _int(env, "GROUP_RANK", default=rank // local_world)
    return _build(
        "torchrun", env,
        rank=(rank, "RANK"), world=(world, "WORLD_SIZE"),
        local_rank=(local_rank, "LOCAL_RANK"), local_world=(local_world, "LOCAL_WORLD_SIZE"),
        node_rank=node_rank,
        master_addr=env.get("MASTER_ADDR") or LOOPBACK,
        master_port=_port(env, DEFAULT_PORT),
    )


# (rank, size, local rank, local size) variables that only an MPI launcher sets
_MPI_LAUNCHERS = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),  # Open MPI
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),  # MVAPICH
)


def _mpi_launcher(env: Mapping[str, str]) -> ClusterEnv | None:
    for names in _MPI_LAUNCHERS:
        if names[0] in env or names[1] in env:
            return _mpi(env, *names)
    if "PMI_RANK" in env and ("MPI_LOCALRANKID" in env or "MPI_LOCALNRANKS" in env):  # Hydra: MPICH, Intel MPI
        return _mpi(env, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")
    return None


def _pmi(env: Mapping[str, str]) -> ClusterEnv | None:
    if "PMI_RANK" in env:
        return _mpi(env, "PMI_RANK", "PMI_SIZE", "PMI_LOCAL_RANK", "PMI_LOCAL_SIZE")
    if "PMIX_RANK" in env:
        if "PMI_SIZE" not in env:
            if _int(env, "PMIX_RANK") == 0:
                return None  # a one-process PMIx launch: local
            raise UserError(
                f"PMIX_RANK={env['PMIX_RANK']} is set but no world size is (OMPI_COMM_WORLD_SIZE or "
                "PMI_SIZE); launch with mpirun/mpiexec or srun so that every rank knows the size"
            )
        return _mpi(env, "PMIX_RANK", "PMI_SIZE", "PMI_LOCAL_RANK", "PMI_LOCAL_SIZE")
    return None


def _mpi(env: Mapping[str, str], rank_var: str, size_var: str, local_rank_var: str, local_size_var: str) -> ClusterEnv | None:
    world = _int(env, size_var, minimum=1)
    rank = _int(env, rank_var)
    if world == 1 and rank == 0:
        return None  # one process is not a cluster: local
    if local_rank_var in env or local_size_var in env:
        local_rank = _int(env, local_rank_var)
        local_world = _int(env, local_size_var, minimum=1)
    else:  # the launcher does not say: take the job to be on one node
        local_rank, local_world = rank, world
    master = env.get("MASTER_ADDR")
    if not master:
        if local_world < world:
            raise UserError(
                f"this MPI job spans several nodes ({local_size_var}={local_world} of {size_var}={world}) "
                "but MASTER_ADDR is not set; export MASTER_ADDR=<host of rank 0> to every rank "
                "(mpirun -x MASTER_ADDR=HOST, mpiexec -genv MASTER_ADDR HOST), or start the job with "
                "'dlscale launch mpi', which does it"
            )
        master = LOOPBACK
    return _build(
        "mpi", env,
        rank=(rank, rank_var), world=(world, size_var),
        local_rank=(local_rank, local_rank_var), local_world=(local_world, local_size_var),
        node_rank=rank // local_world,
        master_addr=master,
        master_port=_port(env, DEFAULT_PORT),
    )


def _slurm(env: Mapping[str, str]) -> ClusterEnv | None:
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return None
    size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world = _int(env, size_var, minimum=1)
    if world == 1:
        return None  # one task (srun torchrun on one node, salloc, the batch script): not a cluster
    rank = _int(env, "SLURM_PROCID")
    if "SLURM_LOCALID" not in env:
        raise UserError(f"SLURM_PROCID and {size_var} are set but SLURM_LOCALID is not; start the tasks with srun")
    local_rank = _int(env, "SLURM_LOCALID")
    node_var, per_node = _slurm_tasks_per_node(env)
    if "SLURM_NODEID" in env:
        node_rank = _int(env, "SLURM_NODEID")
    elif per_node and len(set(per_node)) == 1:
        node_rank = rank // per_node[0]
    else:
        raise UserError("SLURM_NODEID is not set; start the tasks with srun")
    if node_var == "SLURM_NTASKS_PER_NODE":  # one count that holds for every node
        per_node = per_node * (node_rank + 1)
    if per_node:
        if node_rank >= len(per_node):
            raise UserError(
                f"SLURM_NODEID={node_rank} but {node_var}={env[node_var]!r} lists only {len(per_node)} node(s)"
            )
        local_world = per_node[node_rank]
    else:
        nodes_var = "SLURM_STEP_NUM_NODES" if "SLURM_STEP_NUM_NODES" in env else "SLURM_NNODES"
        nodes = _int(env, nodes_var, default=0, minimum=0)
        if not nodes or world % nodes:
            raise UserError(
                "cannot tell how many tasks run on this node: set SLURM_STEP_TASKS_PER_NODE or start the "
                "tasks with srun, which sets it"
            )
        node_var, local_world = nodes_var, world // nodes
    return _build(
        "slurm", env,
        rank=(rank, "SLURM_PROCID"), world=(world, size_var),
        local_rank=(local_rank, "SLURM_LOCALID"), local_world=(local_world, node_var),
        node_rank=node_rank,
        master_addr=env.get("MASTER_ADDR") or _slurm_master(env),
        master_port=_port(env, _slurm_port(env)),
    )


def _local(env: Mapping[str, str]) -> ClusterEnv:
    return ClusterEnv("local", 0, 0, 1, 1, 0, LOOPBACK, _port(env, DEFAULT_PORT))


# --------------------------------------------------------------------------- SLURM helpers


def _slurm_tasks_per_node(env: Mapping[str, str]) -> tuple[str, list[int]]:
    """Tasks on each node of the step, from the first of SLURM's variables that is set
    (``SLURM_NTASKS_PER_NODE`` is one number for all nodes, the others a list per node)."""
    for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        if var in env:
            return var, parse_tasks_per_node(env[var], var)
    return "", []


def _slurm_master(env: Mapping[str, str]) -> str:
    for var in ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST"):
        if env.get(var):
            try:
                return expand_hostlist(env[var])[0]
            except UserError as exc:
                raise UserError(f"{var}: {exc}") from None
    raise UserError(
        "a SLURM job step with several tasks but no SLURM_NODELIST to find the master node in; "
        "export MASTER_ADDR=<host of task 0>"
    )


def _slurm_port(env: Mapping[str, str]) -> int:
    if "SLURM_JOB_ID" not in env:
        return DEFAULT_PORT
    job_id = _int(env, "SLURM_JOB_ID")
    return 15000 + job_id % 10000  # Lightning's rule: the job id's last four digits + 15000


# --------------------------------------------------------------------------- values


def _int(env: Mapping[str, str], var: str, default: int | None = None, minimum: int = 0) -> int:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        if default is None:
            raise UserError(f"{var} is not set, but the launcher's other variables are; set it or launch again")
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise UserError(f"{var}={raw!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"{var}={raw!r} must be at least {minimum}")
    return value


def _port(env: Mapping[str, str], default: int) -> int:
    port = _int(env, "MASTER_PORT", default=default, minimum=1)
    if port > 65535:
        raise UserError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a TCP port (1-65535)")
    return port


def _build(
    kind: str,
    env: Mapping[str, str],
    *,
    rank: tuple[int, str],
    world: tuple[int, str],
    local_rank: tuple[int, str],
    local_world: tuple[int, str],
    node_rank: int,
    master_addr: str,
    master_port: int,
) -> ClusterEnv:
    """Check that the numbers fit together, naming the variable that does not."""
    (r, r_var), (w, w_var), (lr, lr_var), (lw, lw_var) = rank, world, local_rank, local_world
    if r >= w:
        raise UserError(f"{r_var}={r} is not below {w_var}={w}; ranks run from 0 to {w - 1}")
    if lw > w:
        raise UserError(f"{lw_var}={lw} is more than {w_var}={w}")
    if lr >= lw:
        raise UserError(f"{lr_var}={lr} is not below {lw_var}={lw}; local ranks run from 0 to {lw - 1}")
    return ClusterEnv(kind, r, lr, w, lw, node_rank, master_addr, master_port)
