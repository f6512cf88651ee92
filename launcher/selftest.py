"""`launch.py --selftest`: in seconds, check what a long run needs, on the real allocation.

Every process: reads its topology, takes its GPUs (and runs a small matmul on them), joins the process
group, writes and reads back a file in the out-dir; then a `gather_object` brings every process's report
to rank 0, which prints one table. Exit 0 when every check passed, 2 otherwise (the table says which).
Run it first on a new cluster: `srun ... python launch.py --selftest --out-dir /shared/results`.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from launcher.cli import RunConfig
from launcher.errors import EXIT_DONE, EXIT_USER_ERROR, UserError


def _check_gpus(gpus: tuple[int, ...]) -> str:
    if not gpus:
        return "cpu"
    import torch

    names = []
    for index in gpus:
        device = torch.device("cuda", index)
        product = torch.ones(256, 256, device=device) @ torch.ones(256, 256, device=device)
        torch.cuda.synchronize(device)
        if float(product[0, 0]) != 256.0:
            raise RuntimeError(f"GPU {index} computed a wrong matrix product")
        names.append(f"{index}:{torch.cuda.get_device_name(device)}")
    return ", ".join(names)


def _check_out_dir(out_dir: Path, rank: int) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = out_dir / f".selftest-rank{rank}-{uuid.uuid4().hex}"
    text = f"{socket.gethostname()} {os.getpid()}"
    probe.write_text(text)
    read_back = probe.read_text()
    probe.unlink()
    if read_back != text:
        raise RuntimeError(f"{out_dir}: read back something else than written")
    return "writable"


def run_selftest(config: RunConfig) -> int:
    import torch.distributed as dist

    from launcher.topology import connect, detect, disconnect

    started = time.perf_counter()
    topology = detect(config.gpus_per_model, config.auto)
    report = {"rank": topology.rank, "host": topology.hostname, "local_rank": topology.local_rank,
              "node": topology.node_rank, "launcher": topology.launcher}
    failures = []
    for name, check in (("gpus", lambda: _check_gpus(topology.gpus)),
                        ("out_dir", lambda: _check_out_dir(config.resolved_out_dir, topology.rank))):
        try:
            report[name] = check()
        except Exception as error:  # each check reports its own failure in the table
            report[name] = f"FAILED: {error}"
            failures.append(name)
    connect(topology, config.timeout, connect_timeout_s=min(config.timeout, 120.0))
    try:
        backend = dist.get_backend()
        gathered = [None] * topology.world_size if topology.rank == 0 else None
        dist.gather_object(report, gathered, dst=0)
    finally:
        disconnect()
    if topology.rank != 0:
        return EXIT_USER_ERROR if failures else EXIT_DONE
    columns = ["rank", "host", "node", "local_rank", "launcher", "gpus", "out_dir"]
    rows = [[str(entry.get(column, "")) for column in columns] for entry in gathered]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(widths[i]) for i, column in enumerate(columns)))
    for row in rows:
        print("  ".join(value.ljust(widths[i]) for i, value in enumerate(row)))
    bad = [entry["rank"] for entry in gathered if any(str(value).startswith("FAILED") for value in entry.values())]
    print(f"{topology.world_size} process(es), backend {backend}, gather ok, "
          f"{time.perf_counter() - started:.1f} s: " + ("all checks passed" if not bad else f"FAILED on ranks {bad}"))
    if bad:
        raise UserError(f"selftest failed on ranks {bad} (see the table)")
    return EXIT_DONE
