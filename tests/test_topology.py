"""Topology from torchrun, SLURM or nothing; GPU assignment rules (DESIGN: processes and GPUs)."""
import pytest

from launcher.errors import UserError
from launcher.topology import assign_gpus, detect


@pytest.mark.parametrize("local_rank,local_world,visible,k,slurm_bound,expected", [
    (0, 1, 0, 1, False, ()),                      # no GPU: the CPU
    (3, 8, 8, 1, False, (3,)),                    # one GPU per process
    (1, 4, 8, 2, False, (2, 3)),                  # replicas of 2 GPUs
    (1, 2, 8, 4, False, (4, 5, 6, 7)),            # any GPU group, e.g. 4-7
    (0, 1, 4, 4, False, (0, 1, 2, 3)),            # one process over all GPUs
    (1, 2, 2, 2, True, (0, 1)),                   # SLURM bound 2 GPUs to this task
    (0, 2, 8, 3, False, (0, 1, 2)),               # leftover GPUs stay idle but the layout works
])
def test_gpu_assignment(local_rank, local_world, visible, k, slurm_bound, expected):
    assert assign_gpus(local_rank, local_world, visible, k, slurm_bound) == expected


def test_too_many_gpus_asked_for_names_the_command_that_works():
    with pytest.raises(UserError, match=r"8 processes x 4 GPUs needs 32 GPUs; this node shows 8: start 2 processes per node"):
        assign_gpus(0, 8, 8, 4)


def test_gpus_asked_for_on_a_cpu_only_node_is_a_user_error():
    with pytest.raises(UserError, match="shows none"):
        assign_gpus(0, 1, 0, 2)


def test_a_single_process_without_launcher_variables():
    topology = detect(env={}, visible_gpus=0)
    assert (topology.rank, topology.world_size, topology.launcher, topology.gpus) == (0, 1, "single", ())


def test_torchrun_variables():
    env = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
           "MASTER_ADDR": "node1", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x",
           "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2"}
    topology = detect(env=env, visible_gpus=8)
    assert (topology.rank, topology.world_size, topology.local_rank, topology.node_rank) == (5, 16, 1, 1)
    assert topology.launcher == "torchrun" and topology.agent_store and topology.restart_count == 2
    assert topology.gpus == (1,)


def test_torchrun_wins_over_slurm_under_srun_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "TORCHELASTIC_RUN_ID": "x",
           "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    topology = detect(env=env, visible_gpus=0)
    assert (topology.rank, topology.world_size, topology.launcher) == (3, 4, "torchrun")


def test_slurm_variables_with_uneven_tasks_per_node():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "7", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
           "SLURM_STEP_NUM_NODES": "3", "SLURM_STEP_TASKS_PER_NODE": "3(x2),1", "SLURM_JOB_ID": "42",
           "MASTER_ADDR": "gpu-a01", "MASTER_PORT": "23456"}
    topology = detect(env=env, visible_gpus=0)
    assert (topology.rank, topology.world_size, topology.node_rank, topology.local_world_size) == (5, 7, 2, 1)
    assert topology.launcher == "slurm" and topology.job_id == "42"


def test_slurm_without_a_node_list_or_master_address_says_which_variables():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    with pytest.raises(UserError, match="SLURM_STEP_NODELIST or SLURM_JOB_NODELIST.*export MASTER_ADDR and MASTER_PORT"):
        detect(env=env, visible_gpus=0)


SRUN_STEP = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
             "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NUM_NODES": "1", "SLURM_JOB_ID": "4242",
             "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost"}


def test_plain_srun_derives_the_rendezvous_from_the_step():
    from launcher.slurm import master_port_for_step

    topology = detect(env=SRUN_STEP, visible_gpus=0)
    assert (topology.launcher, topology.rank, topology.world_size) == ("slurm", 1, 2)
    assert (topology.master_addr, topology.master_port) == ("localhost", master_port_for_step("4242", 0))


def test_two_steps_of_one_job_get_different_ports():
    first = detect(env=SRUN_STEP, visible_gpus=0)
    second = detect(env=dict(SRUN_STEP, SLURM_STEP_ID="1"), visible_gpus=0)
    assert first.master_port != second.master_port and 20000 <= second.master_port < 32000


def test_exported_master_address_and_port_win_each_on_its_own():
    assert detect(env=dict(SRUN_STEP, MASTER_ADDR="10.1.2.3", MASTER_PORT="23456"),
                  visible_gpus=0).master_port == 23456
    only_address = detect(env=dict(SRUN_STEP, MASTER_ADDR="10.1.2.3"), visible_gpus=0)
    assert (only_address.master_addr, only_address.master_port) == ("10.1.2.3", detect(env=SRUN_STEP, visible_gpus=0).master_port)
    only_port = detect(env=dict(SRUN_STEP, MASTER_PORT="23457"), visible_gpus=0)
    assert (only_port.master_addr, only_port.master_port) == ("localhost", 23457)


def test_the_step_node_list_wins_over_the_job_node_list():
    # Task 0 of a step that runs on part of the allocation is on the step's first node.
    env = dict(SRUN_STEP, SLURM_JOB_NODELIST="no-such-node-x1.invalid,localhost", SLURM_STEP_NODELIST="localhost")
    assert detect(env=env, visible_gpus=0).master_addr == "localhost"


def test_a_job_id_that_is_not_a_number_names_the_variable_and_the_override():
    with pytest.raises(UserError, match=r"SLURM_JOB_ID='x1'.*export MASTER_ADDR and MASTER_PORT"):
        detect(env=dict(SRUN_STEP, SLURM_JOB_ID="x1"), visible_gpus=0)


def test_a_one_task_step_needs_no_rendezvous():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}   # no node list: none needed
    topology = detect(env=env, visible_gpus=0)
    assert (topology.launcher, topology.world_size, topology.master_port) == ("slurm", 1, 0)


def test_a_non_integer_rank_names_the_variable():
    with pytest.raises(UserError, match="RANK"):
        detect(env={"RANK": "x", "WORLD_SIZE": "2"}, visible_gpus=0)
