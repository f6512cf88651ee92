"""A sweep on this machine: one `launch.py` run per checkpoint, one after another or side by side on GPU groups.

Each run is a child process group of its own (`python launch.py ...`, or `torchrun --standalone
--nproc_per_node P launch.py ...` for several processes), its output appended to
`OUT_DIR/<checkpoint>/sweep-launch.log` (and shown on the terminal when runs go one at a time). The
sweep forwards SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 to every running run as SIGTERM, which stops it at
the next batch with its journals flushed (run.json: preempted), starts nothing new and exits 75. Each
child asks the kernel for SIGTERM when the sweep dies (prctl PR_SET_PDEATHSIG), so even `kill -9` of
the sweep leaves no run going on unsupervised. Only the main thread starts children (the death signal
follows the thread that forked) and no other thread exists, so the fork is safe.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from launcher.errors import EXIT_PREEMPTED, UserError
from launcher.outputs import archive_manifest
from launcher.sweep import CheckpointPlan, SweepConfig, record_sweep
from launcher.sweep_state import run_outcome
from launcher.topology import run_environment, visible_gpu_ids

LAUNCH_PY = Path(__file__).resolve().parent.parent / "launch.py"
LOG_NAME = "sweep-launch.log"
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Layout:
    """How the runs share this machine: one slot per run that may go at once, and processes per run."""

    slots: tuple[tuple[str, ...] | None, ...]   # each slot's GPU ids (None: the CPU)
    processes_per_run: int


def plan_layout(visible_gpus: Sequence[str], gpus_per_run: int | None, parallel_runs: int | None,
                processes_per_run: int | None, gpus_per_model: int, auto: bool) -> Layout:
    """Cut the visible GPUs into groups of `gpus_per_run` (default: all of them, one group).

    Pure: GPU ids and flags in, a Layout out. Raises UserError naming the flag when they do not fit.
    """
    if not visible_gpus:
        if gpus_per_run:
            raise UserError(f"--gpus-per-run {gpus_per_run}: this machine shows no GPU")
        return Layout(slots=(None,) * (parallel_runs or 1), processes_per_run=processes_per_run or 1)
    size = gpus_per_run or len(visible_gpus)
    if size > len(visible_gpus):
        raise UserError(f"--gpus-per-run {size} needs {size} GPUs; this machine shows {len(visible_gpus)}")
    groups = [tuple(visible_gpus[start:start + size]) for start in range(0, len(visible_gpus) - size + 1, size)]
    if parallel_runs is not None:
        if parallel_runs > len(groups):
            raise UserError(f"--parallel-runs {parallel_runs}: {len(visible_gpus)} GPUs make only {len(groups)} "
                            f"group(s) of {size} (--gpus-per-run)")
        groups = groups[:parallel_runs]
    if processes_per_run is None:
        if auto:
            processes_per_run = 1
        elif size % gpus_per_model:
            raise UserError(f"--gpus-per-model {gpus_per_model} does not divide the {size} GPUs of a run "
                            "(--gpus-per-run)")
        else:
            processes_per_run = size // gpus_per_model
    return Layout(slots=tuple(groups), processes_per_run=processes_per_run)


def launch_command(python: str, arguments: Sequence[str], processes: int) -> list[str]:
    """The command of one run: plain `python launch.py`, or torchrun on a free local port for several."""
    if processes == 1:
        return [python, str(LAUNCH_PY), *arguments]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            str(LAUNCH_PY), *arguments]


@dataclass
class _Running:
    plan: CheckpointPlan
    process: subprocess.Popen
    log: IO[bytes]
    log_path: Path
    slot: int
    started: float
    started_wall: float
    shown_bytes: int = 0


class _Stop:
    """Signals received by the sweep: stop starting runs, forward SIGTERM to the running ones."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.pending_forward = False

    def handler(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.pending_forward = True


def _die_with_parent(parent_pid: int):
    libc = ctypes.CDLL(None, use_errno=True)

    def prepare() -> None:  # runs in the child between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the sweep died before prctl took effect
            os._exit(EXIT_PREEMPTED)
    return prepare


def _lock(out_dir: Path) -> IO[str]:
    """One sweep at a time per out-dir (released by the kernel when this process ends, however)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / ".sweep.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        raise UserError(f"another sweep is running with --out-dir {out_dir} (process {handle.read().strip() or '?'}); "
                        "wait for it or stop it first") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_sweep_here(config: SweepConfig, plans: Sequence[CheckpointPlan]) -> int:
    """Run every plan's unfinished tasks on this machine; returns 0 (all done), 75 (stopped) or 1."""
    run_config = config.run_config(plans[0].checkpoint)
    layout = plan_layout(visible_gpu_ids(), config.gpus_per_run, config.parallel_runs, config.processes_per_run,
                         run_config.gpus_per_model, run_config.auto)
    lock = _lock(config.out_dir)
    record_sweep(config)
    stop = _Stop()
    previous = {signum: signal.signal(signum, stop.handler)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    stream = len(layout.slots) == 1
    slots_text = ", ".join("CPU" if slot is None else "GPUs " + ",".join(slot) for slot in layout.slots)
    print(f"[sweep] {len(plans)} run(s), {len(layout.slots)} at a time ({slots_text}), "
          f"{layout.processes_per_run} process(es) per run", flush=True)
    queue = list(plans)
    running: dict[int, _Running] = {}
    finished: list[tuple[CheckpointPlan, int, float]] = []
    try:
        while queue or running:
            if stop.pending_forward:
                stop.pending_forward = False
                for entry in running.values():
                    _signal_group(entry.process, signal.SIGTERM)
                if running:
                    print(f"[sweep] {stop.signal_name}: stopping {len(running)} run(s) (journals are flushed); "
                          "rerun the same command to resume", file=sys.stderr, flush=True)
            free = [slot for slot in range(len(layout.slots)) if slot not in running]
            while queue and free and stop.signal_name is None:
                slot = free.pop(0)
                running[slot] = _start(config, queue.pop(0), layout, slot)
            for slot, entry in list(running.items()):
                if stream:
                    entry.shown_bytes = _show_new_output(entry.log_path, entry.shown_bytes)
                code = entry.process.poll()
                if code is None:
                    continue
                if stream:
                    _show_new_output(entry.log_path, entry.shown_bytes)
                entry.log.close()
                del running[slot]
                seconds = time.monotonic() - entry.started
                finished.append((entry.plan, code, seconds))
                _report_end(config, entry, code, seconds)
            if stop.signal_name is not None and not running:
                break
            time.sleep(_POLL_SECONDS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        lock.close()
    return _summary(config, plans, finished, stop.signal_name)


def _start(config: SweepConfig, plan: CheckpointPlan, layout: Layout, slot: int) -> _Running:
    run_dir = config.run_dir(plan.checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    archive_manifest(run_dir)
    gpus = layout.slots[slot]
    command = launch_command(config.python, config.run_arguments(plan.checkpoint, plan.to_run),
                             layout.processes_per_run)
    log_path = run_dir / LOG_NAME
    log = open(log_path, "ab")
    log.write(f"\n=== sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n".encode())
    log.flush()
    shown = log.tell()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env=run_environment(list(gpus) if gpus is not None else None, PYTHONUNBUFFERED="1"),
                               start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
    where = "CPU" if gpus is None else "GPUs " + ",".join(gpus)
    print(f"[sweep] {plan.checkpoint.name}: {', '.join(plan.to_run)} on {where} (log: {log_path})", flush=True)
    return _Running(plan, process, log, log_path, slot, time.monotonic(), time.time(), shown)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the run's main process only: torchrun passes it to its workers, launch.py handles it."""
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass


def _show_new_output(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    if data:
        sys.stderr.buffer.write(data)
        sys.stderr.flush()
    return offset + len(data)


def _report_end(config: SweepConfig, entry: _Running, code: int, seconds: float) -> None:
    outcome = run_outcome(config.run_dir(entry.plan.checkpoint))
    fresh = _manifest_is_fresh(config.run_dir(entry.plan.checkpoint), entry.started_wall)
    said = outcome.describe() if fresh else f"no run.json written (exit {code}); see {entry.log_path}"
    print(f"[sweep] {entry.plan.checkpoint.name}: {said} (exit {code}, {seconds:.0f} s)", flush=True)


def _manifest_is_fresh(run_dir: Path, since: float) -> bool:
    try:
        return (run_dir / "run.json").stat().st_mtime >= since - 1
    except OSError:
        return False


def _summary(config: SweepConfig, plans: Sequence[CheckpointPlan], finished, stopped_by: str | None) -> int:
    from launcher.sweep import failed_runs, format_plan, make_plan, summary_line

    after = make_plan(config)
    print(summary_line(after, config.out_dir))
    print(format_plan(after, config.tasks))
    failures = failed_runs(after)
    not_started = [plan.checkpoint.name for plan in plans
                   if plan.checkpoint.name not in {done.checkpoint.name for done, _, _ in finished}]
    if failures:
        print("runs that did not finish (rerun the same command to resume them):")
        print("\n".join(failures))
    if not_started:
        print(f"not started: {', '.join(not_started)}")
    if stopped_by is not None:
        print(f"[sweep] stopped by {stopped_by}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    if any(plan.to_run for plan in after):
        return 1
    print(f"every pair is done. Report: python -m launcher report {config.out_dir}")
    return 0
