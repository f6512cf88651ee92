"""A training run to sweep (the demo checkpoint saved under three step names, plus a random tiny model), its
data, and one real sweep of it that is stopped mid-way and resumed: built once per test session and shared
by tests/test_sweep.py, tests/test_report.py and tests/test_sweep_slurm.py (fixtures in conftest.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from tests.runs import ROOT, child_env

DEMO_CHECKPOINT = ROOT / "demo" / "checkpoint"
STEPS = (1000, 2000, 3000)
TASKS = ("synthetic_shapes", "pope")
SYNTHETIC_ITEMS = 40              # batch size 1: enough batches that a signal lands inside the first task
POPE_LABELS = {"adversarial": ["yes", "no", "yes", "no"], "random": ["no", "yes", "no"]}
# Every run of the sweep: small and fast; one preprocessing worker (failure paths run with workers on).
LAUNCH_FLAGS = ("--batch-size", "1", "--max-new-tokens", "4", "--num-workers", "1")


def make_sweep_data(root: Path) -> Path:
    """The synthetic shapes set and a small POPE in InternVL's layout (questions, label files, images)."""
    from eval_scripts.synthetic import generate_benchmark

    generate_benchmark(root / "synthetic", n_items=SYNTHETIC_ITEMS, seed=1234, split="test")
    questions, number = [], 0
    for category, labels in POPE_LABELS.items():
        label_lines = []
        for position, label in enumerate(labels):
            number += 1
            image = f"COCO_val2014_{number:012d}.jpg"
            colour = (40 * number % 256, 120, 200 - 20 * position)
            path = root / "data" / "pope" / "val2014" / image
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40 + 8 * position, 32), colour).save(path)
            text = f"Is there a {'circle' if position % 2 else 'square'} in the image?"
            questions.append({"question_id": number, "image": image, "text": text, "category": category})
            label_lines.append({"question_id": position + 1, "image": image, "text": text, "label": label})
        _write_jsonl(root / "data" / "pope" / "coco" / f"coco_pope_{category}.json", label_lines)
    _write_jsonl(root / "data" / "pope" / "llava_pope_test.jsonl", questions)
    return root


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_training_run(root: Path, random_checkpoint: Path) -> list[Path]:
    """root/run/checkpoint-{1000,2000,3000} (copies of the demo model) and root/tiny-random (a link to a
    random tiny InternVL): the four checkpoints of the sweep, in order."""
    checkpoints = []
    for step in STEPS:
        target = root / "run" / f"checkpoint-{step}"
        shutil.copytree(DEMO_CHECKPOINT, target)
        checkpoints.append(target)
    tiny = root / "tiny-random"
    tiny.symlink_to(random_checkpoint, target_is_directory=True)
    return checkpoints + [tiny]


def sweep_command(checkpoints: Sequence[Path], data_root: Path, out_dir: Path, *extra: str,
                  tasks: Sequence[str] = TASKS) -> list[str]:
    return [sys.executable, "-m", "launcher", "sweep", "--checkpoints", *map(str, checkpoints), "--task",
            ",".join(tasks), "--data-root", str(data_root), "--out-dir", str(out_dir), *LAUNCH_FLAGS, *extra]


def journal_lines(task_dir: Path) -> int:
    return sum(path.read_text().count("\n") for path in (task_dir / "shards").glob("*.jsonl"))


def wait_until(predicate, timeout_s: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {process.returncode}) before {what}:\n"
                                 f"{process.communicate()[0][-4000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass(frozen=True)
class Snapshot:
    """What is on disk for one (checkpoint, task) pair at one moment."""

    metrics_mtime_ns: int | None
    predictions_mtime_ns: int | None
    journals: tuple[str, ...]


def snapshot(task_dir: Path) -> Snapshot:
    def mtime(name: str) -> int | None:
        path = task_dir / name
        return path.stat().st_mtime_ns if path.exists() else None

    journals = tuple(sorted(path.name for path in (task_dir / "shards").glob("*.jsonl")))
    return Snapshot(mtime("metrics.json"), mtime("predictions.jsonl"), journals)


@dataclass(frozen=True)
class InterruptedSweep:
    """A sweep (two runs at a time) stopped by SIGTERM once its third run is under way, then run again (one
    run at a time, two processes each: a resumed run may have another world size)."""

    out_dir: Path
    checkpoints: tuple[Path, ...]
    names: tuple[str, ...]
    data_root: Path
    command: tuple[str, ...]
    concurrent: subprocess.CompletedProcess     # the same sweep started again while the first one ran
    first: subprocess.CompletedProcess          # the stopped sweep (stdout and stderr in .stdout)
    status: subprocess.CompletedProcess         # `sweep --status` right after the stop
    second: subprocess.CompletedProcess         # the resumed sweep
    before: dict[tuple[str, str], Snapshot]     # every pair, right after the stop
    manifests_before: dict[str, dict | None]    # run.json per checkpoint, right after the stop
    run_json_before: dict[str, int | None]      # its mtime_ns


def run_interrupted_sweep(out_dir: Path, checkpoints: Sequence[Path], data_root: Path) -> InterruptedSweep:
    """Start the sweep, two runs side by side, and the same sweep again (refused: one sweep per out-dir);
    SIGTERM the first once its third checkpoint (started when one of the first two finished) has journaled a
    few items; ask --status; run the sweep again, one run at a time, two processes each."""
    names = tuple(path.name for path in checkpoints)
    env = child_env()
    command = sweep_command(checkpoints, data_root, out_dir, "--parallel-runs", "2")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    third_task_dir = out_dir / names[2] / TASKS[0]
    try:
        wait_until(lambda: bool(process_children(process.pid)), 120, "the sweep to start its runs", process)
        concurrent = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, timeout=120)
        wait_until(lambda: third_task_dir.is_dir() and journal_lines(third_task_dir) >= 3, 300,
                   f"{names[2]} to journal 3 items", process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
            process.communicate()
    first = subprocess.CompletedProcess(command, process.returncode, output, "")
    before = {(name, task): snapshot(out_dir / name / task) for name in names for task in TASKS}
    manifests = {name: json.loads((out_dir / name / "run.json").read_text())
                 if (out_dir / name / "run.json").exists() else None for name in names}
    run_json_before = {name: (out_dir / name / "run.json").stat().st_mtime_ns
                       if (out_dir / name / "run.json").exists() else None for name in names}
    status = subprocess.run([sys.executable, "-m", "launcher", "sweep", "--status", "--out-dir", str(out_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    time.sleep(0.05)  # a rewrite by the resumed sweep shows in mtime_ns even on a coarse clock
    # The same sweep, its runs now one at a time (output on the terminal) and each under torchrun with two
    # processes (--standalone on a free port): a resumed run may have another world size.
    rerun = command[:-2] + ["--processes-per-run", "2"]
    second = subprocess.run(rerun, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600)
    return InterruptedSweep(out_dir, tuple(checkpoints), names, data_root, tuple(command), concurrent, first, status,
                            second, before, manifests, run_json_before)


def process_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (read from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children


def pid_alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_tree(pid: int) -> None:
    for child in process_children(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
