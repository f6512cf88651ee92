"""How fast a run stops when one rank dies or freezes: prints a table and writes JSON.

    python -m bench.fault_timing [--nproc 2] [--stall-timeout 10] [--out bench/out/fault_timing.json]

Builds the tiny random InternVL and a synthetic data set in a temporary folder, then for each launcher
(plain processes as srun starts them, and torchrun) starts `--nproc` ranks, waits until rank 1 has
journaled items, and either `kill -9`s rank 1 or SIGSTOPs it; it measures the time until every other
process has exited and records their exit codes and run.json's verdict. With GPUs visible each rank
takes one GPU and the process group is NCCL; without, gloo on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.runs import (child_env, start_ranks, torchrun_command, torchrun_workers, wait_all,
                        wait_for_journal_lines)

TASK = "synthetic_shapes"


def _args(checkpoint: Path, data_root: Path, out_dir: Path, stall_timeout: float) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--task", TASK, "--data-root", str(data_root), "--out-dir",
            str(out_dir), "--batch-size", "1", "--num-workers", "0", "--max-new-tokens", "400",
            "--stall-timeout", str(stall_timeout)]


def _verdict(out_dir: Path) -> dict:
    try:
        run = json.loads((out_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": None}
    root = run.get("root_cause") or {}
    return {"status": run.get("status"), "root_rank": root.get("rank"), "root_kind": root.get("kind")}


def scenario(launcher: str, fault: str, nproc: int, checkpoint: Path, data_root: Path, scratch: Path,
             stall_timeout: float) -> dict:
    out_dir = scratch / f"{launcher}-{fault}"
    args = _args(checkpoint, data_root, out_dir, stall_timeout)
    victim = 1
    if launcher == "srun-like":
        processes = start_ranks(nproc, args)
        wait_for_journal_lines(out_dir / TASK, rank=victim, lines=2, timeout=300)
        target_pid = processes[victim].pid
        survivors = [process for rank, process in enumerate(processes) if rank != victim]
    else:
        agent = subprocess.Popen(torchrun_command(nproc, args), env=child_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_for_journal_lines(out_dir / TASK, rank=victim, lines=2, timeout=300)
        target_pid = torchrun_workers(agent.pid)[victim]
        survivors = [agent]
    started = time.monotonic()
    os.kill(target_pid, signal.SIGKILL if fault == "kill-9" else signal.SIGSTOP)
    results = wait_all(survivors, timeout=180)
    seconds = time.monotonic() - started
    if fault == "sigstop":
        try:
            os.kill(target_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # torchrun's agent already killed the frozen worker
    if launcher == "srun-like":
        wait_all([processes[victim]], timeout=10)
    return {"launcher": launcher, "fault": fault, "nproc": nproc, "seconds_to_all_exited": round(seconds, 2),
            "exit_codes": [code for code, _ in results], **_verdict(out_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/fault_timing.json"))
    args = parser.parse_args(argv)

    import torch

    from eval_scripts.synthetic import generate_benchmark
    from launcher.tiny_models import build_native_internvl

    scratch = Path(tempfile.mkdtemp(prefix="fault_timing."))
    checkpoint = build_native_internvl(scratch / "checkpoint", seed=0)
    data_root = scratch / "data"
    generate_benchmark(data_root / "synthetic", n_items=120, seed=5, split="test")
    rows = [scenario(launcher, fault, args.nproc, checkpoint, data_root, scratch, args.stall_timeout)
            for launcher in ("srun-like", "torchrun") for fault in ("kill-9", "sigstop")]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    print(f"{args.nproc} ranks, {backend} on {device}, --stall-timeout {args.stall_timeout:g}")
    print(f"{'launcher':<10} {'fault':<8} {'s to all exited':>15}  exit codes    run.json")
    for row in rows:
        print(f"{row['launcher']:<10} {row['fault']:<8} {row['seconds_to_all_exited']:>15.1f}  "
              f"{str(row['exit_codes']):<13} {row['status']} (root: rank {row['root_rank']}, {row['root_kind']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "backend": backend, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
