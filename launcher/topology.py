"""Which process am I: the only module that reads the launch environment.

Three ways to start, one `Topology`:

* ``python launch.py ...``                          one process (rank 0 of 1)
* ``torchrun --nproc_per_node 8 launch.py ...``     torchrun's RANK / WORLD_SIZE / LOCAL_RANK ...
* ``srun -n 16 python launch.py ...``               SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID ...

torchrun's variables win when present: under ``srun torchrun`` SLURM_PROCID is the node's task, not the
rank. The per-node task count comes from SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE (forms like
``2(x3),1``: nodes may differ).

`connect` opens the coordination store and the process group. Under torchrun the store is a client of the
one torchrun's agent already serves; under srun or plain python, rank 0 serves a TCPStore at
MASTER_ADDR:MASTER_PORT. Under srun, exported MASTER_ADDR / MASTER_PORT win; a missing one is derived
from the step itself, as PyTorch Lightning and submitit do, so a job script whose only command is
``srun python launch.py ...`` works: the address of the step's first node (``SLURM_STEP_NODELIST``, else
``SLURM_JOB_NODELIST``: task 0 runs there), and a port from ``SLURM_JOB_ID`` and ``SLURM_STEP_ID``
(`launcher.slurm.master_port_for_step`: 20000 + (job id + 1009 x step id) mod 12000; step 0 gets the port
the job scripts derive, and two steps of one job on one node get different ports). A one-task step
needs no rendezvous at all.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Mapping

from launcher.errors import UserError
from launcher.slurm import expand_tasks_per_node, hostnames, master_port_for_step, node_address


@dataclass(frozen=True)
class Topology:
    """This process's place in the run. `gpus` are the CUDA indices this process (one replica) uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    hostname: str = "localhost"
    launcher: str = "single"            # "single" | "torchrun" | "slurm"
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    agent_store: bool = False           # torchrun's agent serves the store
    restart_count: int = 0
    job_id: str | None = None
    visible_gpus: int = 0
    gpus: tuple[int, ...] = field(default_factory=tuple)

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def to_json(self) -> dict:
        return {
            "rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank,
            "local_world_size": self.local_world_size, "node_rank": self.node_rank,
            "hostname": self.hostname, "launcher": self.launcher, "job_id": self.job_id,
            "visible_gpus": self.visible_gpus, "gpus": list(self.gpus),
        }


def assign_gpus(local_rank: int, local_world_size: int, visible_gpus: int, gpus_per_model: int,
                slurm_bound: bool = False) -> tuple[int, ...]:
    """The GPU indices of one process (DESIGN: processes and GPUs).

    With V visible GPUs and P processes on this node: if V == K and (P == 1 or SLURM bound these GPUs to
    this task) use them all; else if P * K <= V local rank r uses GPUs rK .. rK+K-1; else a UserError that
    names the command that would work. No visible GPU: () (the CPU).
    """
    if gpus_per_model < 1:
        raise UserError(f"--gpus-per-model must be at least 1, got {gpus_per_model}")
    if visible_gpus == 0:
        if gpus_per_model > 1:
            raise UserError(f"--gpus-per-model {gpus_per_model} asks for GPUs, but this node shows none "
                            "(CUDA_VISIBLE_DEVICES, or a CPU-only torch)")
        return ()
    if visible_gpus == gpus_per_model and (local_world_size == 1 or slurm_bound):
        return tuple(range(visible_gpus))
    needed = local_world_size * gpus_per_model
    if needed <= visible_gpus:
        first = local_rank * gpus_per_model
        return tuple(range(first, first + gpus_per_model))
    workable = max(visible_gpus // gpus_per_model, 0)
    advice = (f"start {workable} process{'es' if workable != 1 else ''} per node "
              f"(torchrun --nproc_per_node {workable}, or srun --ntasks-per-node {workable})"
              if workable else f"use --gpus-per-model {visible_gpus} or fewer")
    raise UserError(f"{local_world_size} processes x {gpus_per_model} GPUs needs {needed} GPUs; this node "
                    f"shows {visible_gpus}: {advice}")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"environment variable {name}={env[name]!r} is not an integer") from None


def detect(gpus_per_model: int = 1, auto: bool = False, env: Mapping[str, str] | None = None,
           visible_gpus: int | None = None) -> Topology:
    """Read the environment once into a frozen Topology (`env` and `visible_gpus` injectable for tests)."""
    env = os.environ if env is None else env
    if visible_gpus is None:
        import torch
        visible_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    hostname = socket.gethostname()
    job_id = env.get("SLURM_JOB_ID")
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        local_world_size = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1
        node_rank = _int(env, "GROUP_RANK") if "GROUP_RANK" in env else rank // max(local_world_size, 1)
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        master_addr = env.get("MASTER_ADDR", "127.0.0.1")
        master_port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
        agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        restart_count = _int(env, "TORCHELASTIC_RESTART_COUNT") if "TORCHELASTIC_RESTART_COUNT" in env else 0
        slurm_bound = False
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world_size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local_rank = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        node_rank = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
        tasks_text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        num_nodes = _int(env, "SLURM_STEP_NUM_NODES") if "SLURM_STEP_NUM_NODES" in env else (
            _int(env, "SLURM_NNODES") if "SLURM_NNODES" in env else node_rank + 1)
        if tasks_text:
            try:
                per_node = expand_tasks_per_node(tasks_text, num_nodes)
            except ValueError as error:
                raise UserError(f"cannot read SLURM_STEP_TASKS_PER_NODE/SLURM_TASKS_PER_NODE={tasks_text!r}: "
                                f"{error}") from None
            local_world_size = per_node[node_rank] if node_rank < len(per_node) else 1
        else:
            local_world_size = 1
        launcher = "slurm"
        if world_size == 1:     # one task: a store in this process, no port (see `connect`)
            master_addr, master_port = "127.0.0.1", 0
        else:
            master_addr, master_port = _slurm_rendezvous(env)
        agent_store = False
        restart_count = _int(env, "SLURM_RESTART_COUNT") if "SLURM_RESTART_COUNT" in env else 0
        slurm_bound = bool(env.get("SLURM_GPUS_PER_TASK")) or "gpu" in env.get("SLURM_TRES_PER_TASK", "")
    else:
        return Topology(hostname=hostname, job_id=job_id, visible_gpus=visible_gpus,
                        gpus=_single_process_gpus(visible_gpus, gpus_per_model, auto))
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside the world of {world_size} processes (check RANK/SLURM_PROCID)")
    if auto:
        gpus_per_model = max(visible_gpus // max(local_world_size, 1), 1)
    gpus = assign_gpus(local_rank, local_world_size, visible_gpus, gpus_per_model, slurm_bound)
    return Topology(rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world_size,
                    node_rank=node_rank, hostname=hostname, launcher=launcher, master_addr=master_addr,
                    master_port=master_port, agent_store=agent_store, restart_count=restart_count,
                    job_id=job_id, visible_gpus=visible_gpus, gpus=gpus)


def _slurm_rendezvous(env: Mapping[str, str]) -> tuple[str, int]:
    """MASTER_ADDR and MASTER_PORT under srun: exported values win, missing ones come from the step (module
    docstring). Both are derived by every task alone, so all tasks agree without talking."""
    fix = "export MASTER_ADDR and MASTER_PORT to set them"
    master_addr = env.get("MASTER_ADDR") or None
    if master_addr is None:
        name = next((name for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                     if env.get(name)), None)
        if name is None:
            raise UserError(f"under srun without MASTER_ADDR, launch.py takes the first node of SLURM_STEP_NODELIST "
                            f"or SLURM_JOB_NODELIST, and neither is set: {fix}")
        try:
            master_addr = node_address(hostnames(env[name])[0])
        except ValueError as error:
            raise UserError(f"cannot derive MASTER_ADDR from {name}={env[name]!r}: {error}; {fix}") from None
    if env.get("MASTER_PORT"):
        return master_addr, _int(env, "MASTER_PORT")
    if not env.get("SLURM_JOB_ID"):
        raise UserError(f"under srun without MASTER_PORT, launch.py derives the port from SLURM_JOB_ID, which is "
                        f"not set: {fix}")
    try:
        return master_addr, master_port_for_step(env["SLURM_JOB_ID"], env.get("SLURM_STEP_ID", "0"))
    except ValueError as error:
        raise UserError(f"cannot derive MASTER_PORT from SLURM_JOB_ID={env['SLURM_JOB_ID']!r}: {error}; {fix}") \
            from None


def _single_process_gpus(visible_gpus: int, gpus_per_model: int, auto: bool) -> tuple[int, ...]:
    if auto:
        return tuple(range(visible_gpus))
    return assign_gpus(0, 1, visible_gpus, gpus_per_model)


def connect(topology: Topology, timeout_s: float, connect_timeout_s: float = 300.0):
    """Open the coordination store and the process group (nccl with CUDA, gloo without).

    Returns the store (a `PrefixStore` private to this launcher and restart). A master that cannot be
    reached, or a port already taken, is a UserError naming host, port and variable within
    `connect_timeout_s`, not a hang.
    """
    import torch
    import torch.distributed as dist

    if topology.world_size == 1 and topology.launcher in ("single", "slurm"):
        store = dist.HashStore()    # nobody to meet: no port to bind (a one-task srun step, an array task)
    else:
        is_server = topology.rank == 0 and not topology.agent_store
        try:
            store = dist.TCPStore(topology.master_addr, topology.master_port, world_size=None,
                                  is_master=is_server, timeout=datetime.timedelta(seconds=connect_timeout_s),
                                  wait_for_workers=False, multi_tenant=is_server)
        except (RuntimeError, OSError) as error:
            role = "serve" if is_server else "reach"
            raise UserError(
                f"rank {topology.rank} on {topology.hostname} could not {role} the coordination store at "
                f"MASTER_ADDR={topology.master_addr} MASTER_PORT={topology.master_port}: {error}. "
                + ("Is the port already taken? Pick another MASTER_PORT." if is_server else
                   "Is the first node up and MASTER_ADDR its address?")) from None
        store.set_timeout(datetime.timedelta(seconds=timeout_s))
    run_store = dist.PrefixStore(f"launcher/restart{topology.restart_count}", store)
    backend = "nccl" if topology.gpus and torch.cuda.is_available() else "gloo"
    if topology.gpus:
        torch.cuda.set_device(topology.gpus[0])
    init_kwargs = {}
    if backend == "nccl":
        init_kwargs["device_id"] = torch.device("cuda", topology.gpus[0])
    dist.init_process_group(backend=backend, store=dist.PrefixStore("process_group", run_store),
                            rank=topology.rank, world_size=topology.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **init_kwargs)
    return run_store


DISCONNECT_TIMEOUT_S = 10.0


def disconnect(timeout_s: float = DISCONNECT_TIMEOUT_S) -> None:
    """Destroy the process group, on every way out of a run (NCCL warns at exit when it was not). With a
    peer dead mid-collective NCCL's teardown can block, so it runs in a thread that the exit does not wait
    for beyond `timeout_s`."""
    import threading

    import torch.distributed as dist

    if not dist.is_initialized():
        return

    def destroy() -> None:
        try:
            dist.destroy_process_group()
        except Exception:   # a group already broken by a dead peer: nothing left to release cleanly
            pass

    teardown = threading.Thread(target=destroy, name="launcher-disconnect", daemon=True)
    teardown.start()
    teardown.join(timeout_s)


# What makes a process join an existing world (topology.detect): a run that a sweep starts on this machine
# must start its own world, even when the sweep itself runs under torchrun or inside a Slurm step.
_WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                    "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")


def visible_gpu_ids(env: Mapping[str, str] | None = None, device_count: int | None = None) -> list[str]:
    """The GPUs this process may hand out, named as CUDA_VISIBLE_DEVICES names them (indices or UUIDs).

    CUDA_VISIBLE_DEVICES, when set, is the list ("" hides every GPU); otherwise every device torch counts,
    as indices. `env` and `device_count` are injectable for tests.
    """
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()]
    if device_count is None:
        import torch
        device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(index) for index in range(device_count)]


def run_environment(gpu_ids: list[str] | None, env: Mapping[str, str] | None = None,
                    **extra: str) -> dict[str, str]:
    """The environment of a run a sweep starts here: this one, without the variables of an enclosing world,
    with CUDA_VISIBLE_DEVICES set to the run's GPU group (None: left as it is) and `extra` added."""
    child = {key: value for key, value in (os.environ if env is None else env).items()
             if key not in _WORLD_VARIABLES and not key.startswith("TORCHELASTIC_")}
    if gpu_ids is not None:
        child["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    child.update(extra)
    return child
