"""Start real launcher processes (plain python, torchrun) from tests and read what they wrote."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = str(ROOT / "launch.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    env.update(extra)
    return env


def launch(args: Sequence[str], timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` as one process."""
    return subprocess.run([sys.executable, LAUNCH, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or child_env(), cwd=ROOT)


def torchrun_command(nproc: int, args: Sequence[str], port: int | None = None, nnodes: int = 1,
                     node_rank: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master_addr", "127.0.0.1",
            "--master_port", str(port or free_port()), LAUNCH, *map(str, args)]


def torchrun(nproc: int, args: Sequence[str], timeout: float = 240, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N launch.py ARGS` on this machine (gloo on the CPU)."""
    return subprocess.run(torchrun_command(nproc, args), capture_output=True, text=True, timeout=timeout,
                          env=env or child_env(), cwd=ROOT)


def predictions(out_dir: Path, task: str) -> list[dict]:
    path = Path(out_dir) / task / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def metrics(out_dir: Path, task: str) -> dict:
    return json.loads((Path(out_dir) / task / "metrics.json").read_text())


def manifest(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "run.json").read_text())


def explain(result: subprocess.CompletedProcess) -> str:
    """Failure message for asserts: exit code and the end of both streams."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"


def start_ranks(world_size: int, args: Sequence[str], port: int | None = None, ranks: Sequence[int] | None = None,
                **popen) -> list[subprocess.Popen]:
    """Plain processes with RANK/WORLD_SIZE set, as srun starts them (rank 0 serves the store): every rank
    of the world, or only `ranks`."""
    port = port or free_port()
    processes = []
    for rank in (range(world_size) if ranks is None else ranks):
        env = child_env(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen([sys.executable, LAUNCH, *map(str, args)], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen))
    return processes


def wait_all(processes: Sequence[subprocess.Popen], timeout: float) -> list[tuple[int | None, str]]:
    """Wait for every process (killing leftovers after `timeout`); returns (exit code, stderr) of each."""
    import time

    deadline = time.monotonic() + timeout
    results = []
    for process in processes:
        try:
            _, err = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            results.append((None, err))
            continue
        results.append((process.returncode, err))
    return results


def wait_for_journal_lines(task_dir: Path, rank: int, lines: int, timeout: float) -> None:
    """Block until rank's journal (any attempt) holds at least `lines` complete lines."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = sum(path.read_text().count("\n") for path in (Path(task_dir) / "shards").glob(f"rank{rank:05d}-*"))
        if count >= lines:
            return
        time.sleep(0.05)
    raise TimeoutError(f"rank {rank} journaled fewer than {lines} lines in {timeout} s")


def torchrun_workers(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the workers a torchrun agent started (read from /proc)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for variable in environ:
            if variable.startswith(b"RANK="):
                workers[int(variable[5:])] = int(entry.name)
    return workers
