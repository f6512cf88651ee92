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
