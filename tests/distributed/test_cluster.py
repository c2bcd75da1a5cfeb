"""dlscale.distributed.env: which launcher started this process, from a dict of variables.

Every launcher's variables are written here as that launcher sets them (torchrun's
worker environment, ``srun`` tasks, Open MPI's ``mpirun``, MPICH/Intel MPI's Hydra,
PMIx, MVAPICH), so ``detect`` is checked without any of them installed. The real
Open MPI check (ranks started by ``mpirun``) is in test_launch_command.py.
"""

from __future__ import annotations

import pytest

from dlscale.distributed.env import ClusterEnv, detect, torch_env
from dlscale.distributed.hostlist import expand_hostlist, parse_tasks_per_node
from dlscale.errors import UserError

# --------------------------------------------------------------------------- environments

TORCHRUN = {  # worker 5 of 8: node 1 of 2, four workers per node
    "TORCHELASTIC_RUN_ID": "1234",
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "gpu01",
    "MASTER_PORT": "29400",
}

SLURM_2x2 = {  # `srun` task 3 of a step with 2 nodes x 2 tasks
    "SLURM_JOB_ID": "123456",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_NODELIST": "gpu[01-02]",
    "SLURM_JOB_NODELIST": "gpu[01-02]",
    "SLURM_STEP_NODELIST": "gpu[01-02]",
}

OPEN_MPI = {  # rank 3 of 4 on one node, as mpirun sets them (Open MPI 4.1 also sets PMIX_RANK)
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "3",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    "OMPI_COMM_WORLD_NODE_RANK": "3",
    "PMIX_RANK": "3",
}


def _slurm(**changes: str | None) -> dict[str, str]:
    env = dict(SLURM_2x2)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --------------------------------------------------------------------------- each kind


def test_local_when_no_launcher_variables():
    assert detect({}) == ClusterEnv("local", 0, 0, 1, 1, 0, "127.0.0.1", 29500)
    assert detect({"MASTER_PORT": "12345", "PATH": "/usr/bin"}).master_port == 12345


def test_torchrun_full_set():
    assert detect(TORCHRUN) == ClusterEnv("torchrun", 5, 1, 8, 4, 1, "gpu01", 29400)


def test_torchrun_without_run_id_and_with_defaults():
    """RANK, WORLD_SIZE and LOCAL_RANK alone (a hand-made launch) are enough: one node,
    group rank from the rank, loopback master."""
    env = detect({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert env == ClusterEnv("torchrun", 1, 1, 2, 2, 0, "127.0.0.1", 29500)


def test_slurm_two_nodes_two_tasks_each():
    env = detect(SLURM_2x2)
    assert env.kind == "slurm"
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (3, 1, 4, 2, 1)
    assert env.master_addr == "gpu01"  # the first host of the compressed list
    assert env.master_port == 15000 + 123456 % 10000  # Lightning's rule: last four digits + 15000


def test_slurm_master_from_the_step_then_job_node_list():
    env = detect(_slurm(SLURM_STEP_NODELIST="nid[0009-0010]", SLURM_NODELIST="gpu[01-02]"))
    assert env.master_addr == "nid0009"
    env = detect(_slurm(SLURM_STEP_NODELIST=None, SLURM_NODELIST=None, SLURM_JOB_NODELIST="cn[7,9]"))
    assert env.master_addr == "cn7"


def test_slurm_user_master_address_and_port_win():
    env = detect(_slurm(MASTER_ADDR="ib-gpu01", MASTER_PORT="31000"))
    assert (env.master_addr, env.master_port) == ("ib-gpu01", 31000)


def test_slurm_uneven_tasks_per_node():
    """'2(x2),1': nodes 0 and 1 run two tasks, node 2 runs one."""
    env = detect(_slurm(SLURM_PROCID="4", SLURM_LOCALID="0", SLURM_NODEID="2", SLURM_NTASKS="5",
                        SLURM_STEP_NUM_TASKS="5", SLURM_STEP_TASKS_PER_NODE="2(x2),1",
                        SLURM_STEP_NODELIST="n[1-3]"))
    assert (env.rank, env.local_world_size, env.node_rank, env.world_size) == (4, 1, 2, 5)


def test_slurm_local_world_from_ntasks_per_node_alone():
    env = detect(_slurm(SLURM_STEP_TASKS_PER_NODE=None, SLURM_TASKS_PER_NODE=None))
    assert env.local_world_size == 2


@pytest.mark.parametrize("changes", [
    {"SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"},
    {"SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": None, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"},
])
def test_slurm_single_task_is_local(changes):
    """`srun torchrun ...` on one node (the agent is the step's one task) or an salloc shell."""
    assert detect(_slurm(**changes)).kind == "local"


def test_slurm_without_procid_is_not_slurm():
    """An sbatch/salloc shell that never ran srun has job variables but no task ones."""
    env = {k: v for k, v in SLURM_2x2.items() if k not in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")}
    assert detect(env).kind == "local"


def test_open_mpi():
    assert detect(OPEN_MPI) == ClusterEnv("mpi", 3, 3, 4, 4, 0, "127.0.0.1", 29500)


def test_open_mpi_with_master_from_launch_command():
    env = detect({**OPEN_MPI, "MASTER_ADDR": "node1", "MASTER_PORT": "29600"})
    assert (env.master_addr, env.master_port) == ("node1", 29600)


def test_mpich_hydra():
    env = detect({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"})
    assert env == ClusterEnv("mpi", 1, 1, 2, 2, 0, "127.0.0.1", 29500)


def test_mpich_pmi_only_is_one_node():
    env = detect({"PMI_RANK": "2", "PMI_SIZE": "3"})
    assert (env.kind, env.rank, env.local_rank, env.world_size, env.local_world_size) == ("mpi", 2, 2, 3, 3)


def test_intel_mpi_two_nodes():
    """Intel MPI (Hydra) with 2 nodes x 2 ranks: node rank from the block placement."""
    env = detect({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
                  "MASTER_ADDR": "node1", "I_MPI_ROOT": "/opt/intel/mpi"})
    assert env == ClusterEnv("mpi", 3, 1, 4, 2, 1, "node1", 29500)


def test_cray_pals_pmi_local_rank():
    env = detect({"PMI_RANK": "5", "PMI_SIZE": "8", "PMI_LOCAL_RANK": "1", "PMI_LOCAL_SIZE": "4", "MASTER_ADDR": "x1"})
    assert (env.rank, env.local_rank, env.local_world_size, env.node_rank) == (5, 1, 4, 1)


def test_pmix_rank_with_pmi_size():
    env = detect({"PMIX_RANK": "1", "PMI_SIZE": "2"})
    assert (env.kind, env.rank, env.world_size) == ("mpi", 1, 2)


def test_pmix_rank_zero_alone_is_local_and_nonzero_alone_is_an_error():
    assert detect({"PMIX_RANK": "0"}).kind == "local"
    with pytest.raises(UserError, match="PMIX_RANK"):
        detect({"PMIX_RANK": "3"})


def test_mvapich():
    env = detect({"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_SIZE": "4",
                  "MV2_COMM_WORLD_LOCAL_RANK": "0", "MV2_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "n1"})
    assert env == ClusterEnv("mpi", 2, 0, 4, 2, 1, "n1", 29500)


def test_one_rank_mpi_is_local():
    single = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1",
              "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    assert detect(single).kind == "local"
    assert detect({"PMI_RANK": "0", "PMI_SIZE": "1"}).kind == "local"


# --------------------------------------------------------------------------- precedence


def test_torchrun_wins_over_slurm():
    """A worker that `srun torchrun` started carries both; torchrun's are the worker's own."""
    env = detect({**SLURM_2x2, **TORCHRUN})
    assert env.kind == "torchrun" and env.rank == 5 and env.world_size == 8


def test_torchrun_wins_over_mpi():
    assert detect({**OPEN_MPI, **TORCHRUN}).kind == "torchrun"


def test_mpirun_inside_an_sbatch_allocation_is_mpi():
    """mpirun in a SLURM job starts its daemons with srun (one task per node), so ranks
    inherit SLURM_PROCID/SLURM_NTASKS of the daemons: 2 'tasks' for 8 ranks."""
    daemons = _slurm(SLURM_PROCID="1", SLURM_LOCALID="0", SLURM_NODEID="1", SLURM_NTASKS="2",
                     SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="1(x2)")
    ranks = {"OMPI_COMM_WORLD_RANK": "6", "OMPI_COMM_WORLD_SIZE": "8",
             "OMPI_COMM_WORLD_LOCAL_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "MASTER_ADDR": "gpu01"}
    env = detect({**daemons, **ranks})
    assert env == ClusterEnv("mpi", 6, 2, 8, 4, 1, "gpu01", 29500)


def test_srun_with_a_pmi_plugin_is_slurm():
    """`srun --mpi=pmi2` also sets PMI_RANK/PMI_SIZE; SLURM's variables (which name the
    master host) are read."""
    env = detect({**SLURM_2x2, "PMI_RANK": "3", "PMI_SIZE": "4", "PMI_FD": "7"})
    assert env.kind == "slurm" and env.master_addr == "gpu01"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("env, variable", [
    ({**TORCHRUN, "RANK": "8"}, "RANK"),
    ({**TORCHRUN, "RANK": "five"}, "RANK"),
    ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({**TORCHRUN, "LOCAL_RANK": "4"}, "LOCAL_RANK"),
    ({**TORCHRUN, "MASTER_PORT": "http"}, "MASTER_PORT"),
    ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT"),
    ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK"),
    ({**SLURM_2x2, "SLURM_PROCID": "4"}, "SLURM_PROCID"),
    ({**SLURM_2x2, "SLURM_PROCID": "-1"}, "SLURM_PROCID"),
    ({**SLURM_2x2, "SLURM_NTASKS": "4.0", "SLURM_STEP_NUM_TASKS": "x"}, "SLURM_STEP_NUM_TASKS"),
    ({**SLURM_2x2, "SLURM_LOCALID": "2"}, "SLURM_LOCALID"),
    ({**SLURM_2x2, "SLURM_STEP_NODELIST": "gpu[01-02"}, "SLURM_STEP_NODELIST"),
    ({**SLURM_2x2, "SLURM_STEP_TASKS_PER_NODE": "2(x)"}, "SLURM_STEP_TASKS_PER_NODE"),
    ({**SLURM_2x2, "SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID"),
    ({**OPEN_MPI, "OMPI_COMM_WORLD_RANK": "4"}, "OMPI_COMM_WORLD_RANK"),
    ({**OPEN_MPI, "OMPI_COMM_WORLD_SIZE": "four"}, "OMPI_COMM_WORLD_SIZE"),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "x", "MPI_LOCALNRANKS": "2"}, "MPI_LOCALRANKID"),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, "OMPI_COMM_WORLD_SIZE"),
])
def test_malformed_values_name_the_variable(env, variable):
    with pytest.raises(UserError, match=variable):
        detect(env)


def test_multi_node_mpi_without_master_addr_says_how_to_fix_it():
    two_nodes = {**OPEN_MPI, "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    with pytest.raises(UserError, match="MASTER_ADDR") as caught:
        detect(two_nodes)
    assert "mpirun -x MASTER_ADDR" in str(caught.value) and "dlscale launch mpi" in str(caught.value)


def test_detect_reads_os_environ_by_default(monkeypatch):
    for key in list(TORCHRUN) + list(SLURM_2x2) + list(OPEN_MPI):
        monkeypatch.delenv(key, raising=False)
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    assert detect().kind == "torchrun"


# --------------------------------------------------------------------------- torch_env


def test_torch_env_round_trips_through_detect():
    for source in (TORCHRUN, SLURM_2x2, OPEN_MPI, {}):
        env = detect(source)
        variables = torch_env(env)
        assert set(variables) == {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                  "MASTER_ADDR", "MASTER_PORT"}
        assert all(isinstance(v, str) for v in variables.values())
        again = detect(variables)  # what torchrun would have set: read back as the same place
        assert (again.rank, again.local_rank, again.world_size, again.local_world_size, again.node_rank,
                again.master_addr, again.master_port) == (env.rank, env.local_rank, env.world_size,
                                                           env.local_world_size, env.node_rank,
                                                           env.master_addr, env.master_port)


# --------------------------------------------------------------------------- host lists


@pytest.mark.parametrize("spec, hosts", [
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("node1,node2", ["node1", "node2"]),
    ("single", ["single"]),
    ("nid[0009-0011]", ["nid0009", "nid0010", "nid0011"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("gpu[01-02],cpu[5]", ["gpu01", "gpu02", "cpu5"]),
    ("gpu[01-04,07],cpu3", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]),
    # several bracket groups: every combination, the leftmost varying slowest (as scontrol)
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("gpu[1-2].cluster.org", ["gpu1.cluster.org", "gpu2.cluster.org"]),
])
def test_expand_hostlist(spec, hosts):
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", [
    "", " ", "gpu[01-02", "gpu01-02]", "gpu[]", "gpu[2-1]", "gpu[a-b]", "gpu[1-]", "gpu[[1-2]]",
    "a,,b", "a,", ",a", "a b", "gpu[0-99999999]",
])
def test_bad_hostlists_raise_user_error(spec):
    with pytest.raises(UserError):
        expand_hostlist(spec)


def test_parse_tasks_per_node():
    assert parse_tasks_per_node("4") == [4]
    assert parse_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(UserError, match="SLURM_TASKS_PER_NODE"):
        parse_tasks_per_node("2(x0)")
