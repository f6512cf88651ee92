"""Every failure ends the run in seconds: a matrix of real runs, each broken one way.

Failure kinds x preprocessing workers (0, 1, 3) x launchers (plain `python launch.py`, plain processes
with RANK/WORLD_SIZE as srun starts them, torchrun); srun itself on the local Slurm cluster is in
tests/test_slurm_cluster.py. Not the full product: a subset in which every kind, every worker count and
every launcher appears, cheap enough for CI. Each case asserts

* every process of the run (ranks, their DataLoader workers, torchrun's agent) is gone within
  `GONE_WITHIN_S` of the failure (of the verdict in run.json for the failures a run finds itself, of the
  injection for signals and peers), found by an environment marker, so workers orphaned by a killed
  rank are counted too;
* the exit code of every process (torchrun's own code: 1 when a worker failed), run.json's status and
  its root cause: the kind and the rank;
* nothing journaled before the failure is lost (every journal holds at least the lines seen during the
  run, each a whole JSON row, no item twice);
* stderr holds no DataLoader wrapper ("Caught DataError in DataLoader worker") and no NCCL-style
  "destroy_process_group() was not called" (imitated on the CPU, tests/exit_check/).

Faults in the model come from a checkpoint whose code fails on a marker word (tests/faulty_model.py);
the production code has no test hook.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faulty_model import bad_item_data, fault_data_root
from tests.runs import (LAUNCH, PROCESS_GROUP_LEAK_WARNING, ROOT, RunWatch, child_env, free_port, manifest,
                        start_ranks, torchrun_command, torchrun_workers, wait_for_journal_lines)

TASK = "synthetic_shapes"
N_ITEMS = 48            # the data of the signal and peer cases: long enough to interrupt mid-run
BAD_INDEX = 13          # the bad item (of 24, tests/faulty_model.py): batches before it are journaled first
GONE_WITHIN_S = 30.0
STALL_TIMEOUT_S = 6
pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Case:
    kind: str
    launcher: str           # "python" | "ranks" | "torchrun"
    world: int
    workers: int

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.launcher}{self.world if self.launcher != 'python' else ''}-w{self.workers}"


CASES = [
    Case("missing-image", "python", 1, 1),      # the issue's own run: one process, one worker
    Case("missing-image", "torchrun", 2, 3),
    Case("corrupt-image", "python", 1, 3),
    Case("corrupt-image", "ranks", 2, 1),
    Case("generate-raises", "python", 1, 1),
    Case("generate-raises", "ranks", 2, 0),
    Case("generate-raises", "torchrun", 2, 3),
    Case("oom-at-batch-size-1", "python", 1, 0),
    Case("oom-at-batch-size-1", "torchrun", 2, 1),
    Case("sigterm", "python", 1, 3),
    Case("sigterm", "torchrun", 2, 1),
    Case("sigint", "python", 1, 1),
    Case("sigint", "ranks", 2, 3),
    Case("kill-9-peer", "ranks", 3, 1),
    Case("kill-9-peer", "torchrun", 2, 3),
    Case("frozen-peer", "ranks", 2, 3),
]
BAD_ITEM_KINDS = {"missing-image", "corrupt-image", "generate-raises", "oom-at-batch-size-1"}
USER_ERRORS = {"missing-image", "corrupt-image", "oom-at-batch-size-1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return fault_data_root(tmp_path_factory.mktemp("matrix_data"), N_ITEMS, seed=4242)


def case_args(case: Case, checkpoint: Path, data_root: Path, out_dir: Path, data: Path | None) -> list[str]:
    args = ["--checkpoint", checkpoint, "--trust-remote-code", "--task", TASK, "--data-root", data_root,
            "--out-dir", out_dir, "--num-workers", case.workers, "--stall-timeout", STALL_TIMEOUT_S]
    if data is not None:    # a bad item: short generations, batches of 2 (4 for the out-of-memory split)
        batch = 4 if case.kind == "oom-at-batch-size-1" else 2
        args += ["--data", data, "--batch-size", batch, "--max-new-tokens", 4]
    else:                   # signals and peers: slow items (the random model rarely stops early)
        args += ["--batch-size", 1, "--max-new-tokens", 200]
    return [str(arg) for arg in args]


@dataclass
class Started:
    processes: list[subprocess.Popen]       # the ranks, or torchrun's agent, or the one process
    logs: list[Path]

    def stderr(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs)


@contextlib.contextmanager
def sigint_not_ignored():
    """A shell starts background jobs with SIGINT ignored, and their children inherit that: Ctrl-C would not
    reach a run started from a test run in the background. Children of a process that catches SIGINT start
    with the default action, as a run started from a terminal does."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def start(case: Case, args: list[str], marker: str, logs: Path) -> Started:
    """The run, its stderr into files (a pipe nobody reads could fill and block a process)."""
    with sigint_not_ignored():
        return _start(case, args, marker, logs)


def _start(case: Case, args: list[str], marker: str, logs: Path) -> Started:
    env = child_env(exit_check=True, FAULT_CASE=marker)
    if case.launcher == "ranks":
        port, files, processes = free_port(), [], []
        for rank in range(case.world):
            files.append(logs / f"rank{rank}.err")
            with files[-1].open("w") as stderr:
                processes += start_ranks(case.world, args, port=port, ranks=[rank], env=env,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        return Started(processes, files)
    command = torchrun_command(case.world, args) if case.launcher == "torchrun" else [sys.executable, LAUNCH, *args]
    path = logs / f"{case.launcher}.err"
    with path.open("w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    return Started([process], [path])


def wait_for_exit(processes: list[subprocess.Popen], out_dir: Path, watch: RunWatch) -> None:
    """Until every process has exited; fails when one is still alive GONE_WITHIN_S after run.json's
    verdict (the hang this matrix exists for), or after 240 s without a verdict."""
    started = time.monotonic()
    while any(process.poll() is None for process in processes):
        try:
            run = manifest(out_dir)
        except (OSError, ValueError):
            run = {"status": "running"}
        if run["status"] != "running":
            waited = time.time() - (out_dir / "run.json").stat().st_mtime
            assert waited < GONE_WITHIN_S + 10, f"run.json says {run['status']} since {waited:.0f} s, and " \
                f"these still run: {watch.alive()}"
        assert time.monotonic() - started < 240, f"no verdict after 240 s; running: {watch.alive()}"
        time.sleep(0.2)


def rank_pid(case: Case, started: Started, rank: int) -> int:
    if case.launcher == "ranks":
        return started.processes[rank].pid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = torchrun_workers(started.processes[0].pid)
        if rank in workers:
            return workers[rank]
        time.sleep(0.2)
    raise AssertionError(f"torchrun started no rank {rank}")


def signal_everyone(watch: RunWatch, signum: int) -> None:
    """What Slurm does on preemption and a terminal on Ctrl-C: every process gets it, workers included."""
    for pid, _ in watch.alive():
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def torchrun_exit_codes(stderr: str) -> dict[int, int]:
    """rank -> exit code of the failed workers torchrun lists in its failure report."""
    return {int(rank): int(code) for rank, code in
            re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s+exitcode\s*:\s*(-?\d+)", stderr)}


def expected_codes(case: Case, failing_rank: int) -> dict[int, int | None]:
    """rank -> exit code (None: killed or frozen by the test). A rank other than 0 that has finished its
    share before the failure leaves with 0 (`codes_match`); rank 0 always waits for everyone."""
    ranks = range(case.world)
    if case.kind in USER_ERRORS:
        return {rank: 2 for rank in ranks}
    if case.kind == "generate-raises":
        return {rank: 1 if rank == failing_rank else 3 for rank in ranks}
    if case.kind == "sigterm":
        return {rank: 75 for rank in ranks}
    if case.kind == "sigint":
        return {rank: 3 for rank in ranks}
    return {rank: None if rank == 1 else 3 for rank in ranks}     # kill -9 / SIGSTOP of rank 1


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_failure_ends_every_process_with_its_verdict_and_keeps_the_journal(
        case, faulty_checkpoint, data_root, tmp_path):
    out_dir = tmp_path / "out"
    data, bad_id = (bad_item_data(data_root / "synthetic" / "test.jsonl", case.kind, BAD_INDEX,
                                  tmp_path / "data.jsonl") if case.kind in BAD_ITEM_KINDS else (None, None))
    marker = uuid.uuid4().hex
    watch = RunWatch(f"FAULT_CASE={marker}", out_dir / TASK)
    started = start(case, case_args(case, faulty_checkpoint, data_root, out_dir, data), marker, tmp_path)
    frozen_pid = None
    try:
        # ----- the failure
        injected_at = None
        if case.kind in ("sigterm", "sigint"):
            wait_for_journal_lines(out_dir / TASK, rank=0, lines=2, timeout=180)
            injected_at = time.monotonic()
            signal_everyone(watch, signal.SIGTERM if case.kind == "sigterm" else signal.SIGINT)
        elif case.kind in ("kill-9-peer", "frozen-peer"):
            wait_for_journal_lines(out_dir / TASK, rank=1, lines=2, timeout=180)
            pid = rank_pid(case, started, 1)
            injected_at = time.monotonic()
            os.kill(pid, signal.SIGKILL if case.kind == "kill-9-peer" else signal.SIGSTOP)
            frozen_pid = pid if case.kind == "frozen-peer" else None
        wait_for_exit([process for process in started.processes if process.pid != frozen_pid], out_dir, watch)
        if frozen_pid is not None:      # the others are done: end the frozen rank as its job would be
            assert time.monotonic() - injected_at < STALL_TIMEOUT_S + GONE_WITHIN_S
            os.kill(frozen_pid, signal.SIGKILL)     # its workers must follow it (they ignore SIGTERM)
            for process in started.processes:
                process.wait(timeout=30)
        verdict_at = (out_dir / "run.json").stat().st_mtime
        # ----- every process gone: the ranks, their workers (those of a killed rank too), the agent
        since = time.monotonic() - injected_at if injected_at is not None else time.time() - verdict_at
        gone_after = watch.wait_gone(GONE_WITHIN_S)
        print(f"\n{case.id}: every process gone {since + gone_after:.1f} s after the "
              f"{'injection' if injected_at is not None else 'verdict'}")
        assert since + gone_after < GONE_WITHIN_S + (STALL_TIMEOUT_S if frozen_pid else 0)
    finally:
        watch.stop()
        watch.kill_all()
    roots = {process.pid for process in started.processes}
    ranks = set(watch.children(roots)) if case.launcher == "torchrun" else roots
    if case.kind != "missing-image":    # that one stops before any worker starts
        assert len(ranks) == case.world
        # The premise: the run had its workers. A peer stopped by the failure may not have started all of
        # its own (nor lived long enough for a poll to see them), so one rank with all of them is the check.
        assert max(len(watch.children({rank})) for rank in ranks) >= case.workers, watch.processes

    stderr = started.stderr()
    run = manifest(out_dir)
    root = run.get("root_cause", {})
    failing_rank = root.get("rank", 0)

    # ----- exit codes
    expected = expected_codes(case, failing_rank)
    if case.launcher == "torchrun":
        assert started.processes[0].returncode != 0, stderr[-4000:]
        codes = torchrun_exit_codes(stderr)         # torchrun lists the workers that did not exit 0
        assert codes or case.kind == "sigterm", stderr[-4000:]   # a signalled agent lists no failure
        codes = {rank: codes.get(rank, 0) for rank in range(case.world)} if codes else {}
    else:
        codes = {rank: process.returncode for rank, process in enumerate(started.processes)}
    for rank, code in codes.items():
        if expected[rank] is None:
            continue
        finished_first = rank not in (0, failing_rank) and code == 0 and case.kind in BAD_ITEM_KINDS
        assert code == expected[rank] or finished_first, (codes, expected, stderr[-4000:])

    # ----- run.json
    status = {"sigterm": "preempted", "frozen-peer": "stalled"}.get(case.kind, "failed")
    assert run["status"] == status, (run, stderr[-4000:])
    if case.kind in USER_ERRORS:
        assert root["kind"] == "user-error"
        assert "Traceback" not in root["message"] and "Caught" not in root["message"]
        assert "Caught DataError" not in stderr, stderr[-4000:]
        if case.launcher != "torchrun":     # torchrun's agent prints its own traceback of ChildFailedError
            assert "Traceback" not in stderr, stderr[-4000:]
    if case.kind == "missing-image":
        assert "no_such_image.png" in root["message"] and f"data.jsonl:{BAD_INDEX + 1}" in root["message"]
        assert f"item {bad_id!r}" in root["message"] and "--on-bad-item skip" in root["message"]
        assert "model loaded" not in stderr            # found before the model loads
        assert "\n" not in root["message"]              # one bad file: one line
    elif case.kind == "corrupt-image":
        assert f"item {bad_id!r}" in root["message"] and "corrupt.png" in root["message"]
        assert "--on-bad-item skip" in root["message"]
        assert root["observed_by"] == root["rank"]       # the rank whose worker met the item
    elif case.kind == "oom-at-batch-size-1":
        assert f"out of memory generating item {bad_id!r} alone" in root["message"]
        assert root["observed_by"] == root["rank"]
    elif case.kind == "generate-raises":
        assert root["kind"] == "exception" and "injected fault" in root["message"]
        assert root["observed_by"] == root["rank"] and "RuntimeError" in root["traceback"]
    elif case.kind == "sigint":
        assert root["kind"] == "interrupted"
    elif case.kind == "kill-9-peer":
        assert (root["rank"], root["kind"]) == (1, "died")
    elif case.kind == "frozen-peer":
        assert (root["rank"], root["kind"]) == (1, "stalled")
    if case.kind != "sigterm":
        assert root["rank"] in range(case.world)
    assert PROCESS_GROUP_LEAK_WARNING not in stderr, stderr[-4000:]

    # ----- nothing journaled before the failure is lost
    rows = watch.check_journals()
    journaled = [row for file_rows in rows.values() for row in file_rows]
    if case.kind == "missing-image":
        assert journaled == []
    else:
        assert journaled, "the failure came before any batch was journaled: the case tests less than it says"
    if bad_id is not None:
        assert bad_id not in {str(row["id"]) for row in journaled}


def test_the_exit_check_sees_a_process_group_left_alive(tmp_path):
    """The imitated NCCL warning (tests/exit_check) appears when a process exits with its group alive,
    and not when it destroys it: the matrix's check can fail."""
    script = ("import sys, torch.distributed as dist\n"
              "dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)\n"
              "if sys.argv[1] == 'destroy':\n    dist.destroy_process_group()\n")
    outcomes = {}
    for how in ("leave", "destroy"):
        result = subprocess.run([sys.executable, "-c", script, how], env=child_env(exit_check=True),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        outcomes[how] = PROCESS_GROUP_LEAK_WARNING in result.stderr
    assert outcomes == {"leave": True, "destroy": False}
