"""Every way a run can fail, under torchrun, with NCCL on GPUs: prints a table and writes JSON.

    python -m bench.failure_paths [--nproc 2] [--workers 2] [--out bench/out/failure_paths.json]

For each case (a clean run, a missing image, a corrupt image, an exception in the model on one batch,
out of memory at batch size 1, SIGTERM to every process, kill -9 of rank 1) it builds the tiny model and
data in a temporary folder, runs `torchrun --nproc_per_node N launch.py` (one GPU per rank when GPUs are
visible: NCCL; else gloo on the CPU) and records: torchrun's exit code and each failed rank's, run.json's
status and root cause, the seconds from the verdict (or the injection) until every process of the run
(agent, ranks, DataLoader workers) is gone, and whether stderr holds NCCL's "destroy_process_group() was
not called" warning. On the CPU that warning is imitated (tests/exit_check); on GPUs it is NCCL's own,
which is what this script is for: the CPU tests cannot see it.
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
import uuid
from pathlib import Path
from typing import Sequence

from bench.report import write_report
from tests.faulty_model import bad_item_data, build_faulty_checkpoint, fault_data_root
from tests.runs import (PROCESS_GROUP_LEAK_WARNING, ROOT, RunWatch, child_env, torchrun_command, torchrun_workers,
                        wait_for_journal_lines)

TASK = "synthetic_shapes"
CASES = ("done", "missing-image", "corrupt-image", "generate-raises", "oom-at-batch-size-1", "sigterm", "kill-9")


def _exit_codes(stderr: str) -> dict[int, int]:
    import re

    return {int(rank): int(code) for rank, code in
            re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s+exitcode\s*:\s*(-?\d+)", stderr)}


def run_case(case: str, checkpoint: Path, data_root: Path, work: Path, nproc: int, workers: int,
             gpus: bool) -> dict:
    out_dir = work / case / "out"
    out_dir.mkdir(parents=True)
    args = ["--checkpoint", checkpoint, "--trust-remote-code", "--task", TASK, "--data-root", data_root,
            "--out-dir", out_dir, "--num-workers", workers]
    if case in ("sigterm", "kill-9"):
        args += ["--batch-size", 1, "--max-new-tokens", 400]
    else:
        data = data_root / "synthetic" / "test.jsonl"
        if case != "done":
            data, _ = bad_item_data(data, case, 13, work / case / "data.jsonl")
        args += ["--data", data, "--batch-size", 2 if case != "oom-at-batch-size-1" else 4, "--max-new-tokens", 8]
    marker = uuid.uuid4().hex
    env = child_env(exit_check=not gpus, FAULT_CASE=marker)
    watch = RunWatch(f"FAULT_CASE={marker}", out_dir / TASK)
    log = work / case / "stderr.txt"
    started = time.monotonic()
    with log.open("w") as stderr:
        agent = subprocess.Popen(torchrun_command(nproc, [str(arg) for arg in args]), env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    injected_at = None
    try:
        if case == "sigterm":
            wait_for_journal_lines(out_dir / TASK, rank=0, lines=2, timeout=300)
            injected_at = time.monotonic()
            for pid, _ in watch.alive():
                os.kill(pid, signal.SIGTERM)
        elif case == "kill-9":
            wait_for_journal_lines(out_dir / TASK, rank=1, lines=2, timeout=300)
            injected_at = time.monotonic()
            os.kill(torchrun_workers(agent.pid)[1], signal.SIGKILL)
        agent.wait(timeout=600)
        verdict_at = (out_dir / "run.json").stat().st_mtime
        since = time.monotonic() - injected_at if injected_at is not None else time.time() - verdict_at
        gone = since + watch.wait_gone(120)
    finally:
        watch.stop()
        watch.kill_all()
    text = log.read_text(errors="replace")
    run = json.loads((out_dir / "run.json").read_text())
    root = run.get("root_cause") or {}
    return {"case": case, "torchrun_exit": agent.returncode, "rank_exits": _exit_codes(text),
            "status": run.get("status"), "root_kind": root.get("kind"), "root_rank": root.get("rank"),
            "root_message": (root.get("message") or "")[:160], "seconds_to_all_gone": round(gone, 1),
            "from": "injection" if injected_at is not None else "verdict",
            "processes_seen": len(watch.processes), "wall_s": round(time.monotonic() - started, 1),
            "process_group_warning": PROCESS_GROUP_LEAK_WARNING in text,
            "dataloader_wrapper_in_stderr": "Caught DataError" in text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failure_paths", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="preprocessing workers per rank")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=Path("bench/out/failure_paths.json"))
    args = parser.parse_args(argv)
    import torch

    from launcher.tiny_models import build_native_internvl

    gpus = torch.cuda.is_available() and torch.cuda.device_count() >= args.nproc
    rows = []
    with tempfile.TemporaryDirectory(prefix="failure-paths-") as folder:
        work = Path(folder)
        checkpoint = build_faulty_checkpoint(build_native_internvl(work / "native", seed=0), work / "faulty")
        data_root = fault_data_root(work / "data", items=60, seed=11)
        for case in args.cases.split(","):
            row = run_case(case, checkpoint, data_root, work, args.nproc, args.workers, gpus)
            rows.append(row)
            print(json.dumps(row), flush=True)
    backend = "nccl" if gpus else "gloo (CPU; the process-group warning is imitated)"
    print(f"\n{args.nproc} ranks under torchrun, {args.workers} workers each, {backend}")
    header = f"{'case':<20} {'torchrun':>8} {'rank exits':<16} {'status':<10} {'root':<18} {'gone s':>7} {'pg warn':>7}"
    print(header)
    for row in rows:
        exits = ",".join(f"{rank}:{code}" for rank, code in sorted(row["rank_exits"].items())) or "-"
        root = f"{row['root_kind'] or '-'}@{row['root_rank'] if row['root_rank'] is not None else '-'}"
        print(f"{row['case']:<20} {row['torchrun_exit']:>8} {exits:<16} {row['status']:<10} {root:<18} "
              f"{row['seconds_to_all_gone']:>7} {str(row['process_group_warning']):>7}")
    report = {"kind": "failure_paths", "machine": platform.node(), "backend": "nccl" if gpus else "gloo",
              "nproc": args.nproc, "workers": args.workers, "torch": torch.__version__, "rows": rows}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
