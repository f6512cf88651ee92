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
# On PYTHONPATH, its sitecustomize.py prints NCCL's "destroy_process_group() was not called" warning at
# a Python exit that leaves the process group alive, as NCCL does (gloo on the CPU says nothing).
EXIT_CHECK_DIR = ROOT / "tests" / "exit_check"
PROCESS_GROUP_LEAK_WARNING = "destroy_process_group() was not called"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(exit_check: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a launcher process started by a test; `exit_check` adds EXIT_CHECK_DIR."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0")
    env["PYTHONPATH"] = (f"{EXIT_CHECK_DIR}{os.pathsep}" if exit_check else "") + str(ROOT) + os.pathsep \
        + env.get("PYTHONPATH", "")
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
                env: dict[str, str] | None = None, **popen) -> list[subprocess.Popen]:
    """Plain processes with RANK/WORLD_SIZE set, as srun starts them (rank 0 serves the store): every rank
    of the world, or only `ranks`; `env` (default `child_env()`) gets each rank's variables added."""
    port = port or free_port()
    processes = []
    for rank in (range(world_size) if ranks is None else ranks):
        rank_env = dict(env or child_env(), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        processes.append(subprocess.Popen([sys.executable, LAUNCH, *map(str, args)], env=rank_env, cwd=ROOT,
                                          text=True, **popen))
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


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], start time [19])."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


class RunWatch:
    """Watches a run from outside while it runs, for fault tests.

    Processes: every process whose environment holds `marker`, "NAME=VALUE" (set in the environment of the process a
    test starts, so inherited by torchrun's agent, the ranks, their DataLoader workers, and srun's tasks
    through sbatch), found by polling /proc every `interval` seconds; a process is identified by pid and
    start time, so a reused pid is not mistaken for it. Journals: the most complete lines each journal
    file under `task_dir` held at any poll, so a test can check that nothing journaled was lost later.
    """

    def __init__(self, marker: str, task_dir: Path | None = None, interval: float = 0.1) -> None:
        import threading

        self.marker = marker.encode()
        self.task_dir = Path(task_dir) if task_dir is not None else None
        self.interval = interval
        self.processes: dict[tuple[int, str], tuple[int, str]] = {}   # (pid, start time) -> (ppid, command)
        self.journal_lines: dict[Path, int] = {}
        self._not_ours: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="run-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            if fields is None:
                continue
            key = (int(entry.name), fields[19])
            if key in self._not_ours or key in self.processes:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            with self._lock:
                if self.marker in environ:
                    self.processes[key] = (int(fields[1]), command)
                else:
                    self._not_ours.add(key)
        if self.task_dir is not None:
            for path in (self.task_dir / "shards").glob("*.jsonl"):
                try:
                    lines = path.read_bytes().count(b"\n")
                except OSError:
                    continue
                with self._lock:
                    self.journal_lines[path] = max(lines, self.journal_lines.get(path, 0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def children(self, parents: set[int]) -> list[int]:
        """Pids of the watched processes whose parent was one of `parents` when first seen."""
        with self._lock:
            return [pid for (pid, _), (ppid, _) in self.processes.items() if ppid in parents]

    def alive(self) -> list[tuple[int, str]]:
        """(pid, command) of the watched processes still running (a zombie has ended)."""
        with self._lock:
            known = list(self.processes.items())
        living = []
        for (pid, started), (_, command) in known:
            fields = _stat_fields(pid)
            if fields is not None and fields[19] == started and fields[0] not in ("Z", "X"):
                living.append((pid, command))
        return living

    def wait_gone(self, timeout: float) -> float:
        """Seconds until every watched process has ended; AssertionError naming the survivors after `timeout`."""
        import time

        started = time.monotonic()
        while self.alive():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"still running {timeout:.0f} s later: {self.alive()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def kill_all(self) -> None:
        """SIGKILL whatever is left (a failed test must not leave processes behind)."""
        import signal

        for pid, _ in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def check_journals(self) -> dict[Path, list[dict]]:
        """Every journal still holds at least the complete lines it held at any poll, each a JSON row, and
        no item id appears twice in one attempt. Returns the rows per file."""
        rows: dict[Path, list[dict]] = {}
        with self._lock:
            seen = dict(self.journal_lines)
        for path, most in seen.items():
            text = path.read_text()
            complete = text[:text.rfind("\n") + 1].splitlines() if "\n" in text else []
            assert len(complete) >= most, f"{path} held {most} complete lines during the run, {len(complete)} after"
            rows[path] = [json.loads(line) for line in complete]
        attempts: dict[str, list[str]] = {}
        for path, file_rows in rows.items():
            attempts.setdefault(path.stem.split("-")[-1], []).extend(str(row["id"]) for row in file_rows)
        for attempt, ids in attempts.items():
            assert len(ids) == len(set(ids)), f"{attempt}: an item journaled twice: {sorted(ids)}"
        return rows
