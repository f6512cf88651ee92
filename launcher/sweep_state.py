"""What a sweep has already done, read from the runs' own files (nothing of the sweep's is trusted).

A (checkpoint, task) pair is

- ``done``: `<run dir>/<task>/metrics.json` exists and the task folder's fingerprint.json matches what
  this sweep would run (model, task, generation settings, model settings);
- ``partial``: the fingerprint matches, no metrics yet, some items journaled: the run resumes from them;
- ``pending``: nothing there yet;
- ``changed``: the folder holds a run with other settings: refused unless --overwrite (as launch.py does).

The fingerprint is the one `launcher/evaluation.py` writes before its first batch. Everything in it can be
computed without loading the model except the resolved dtype (bf16 on GPUs, float32 on the CPU, unless
--dtype says): the dtype is compared only when --dtype is given; launch.py still checks it on its own.
A run's outcome (`status`, root cause) comes from its run.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from eval_scripts.base import TaskInputs
from eval_scripts.registry import get_task
from launcher.cli import RunConfig
from launcher.coordination import describe_failure
from launcher.journal import read_journals
from launcher.outputs import checkpoint_identity, read_json

DONE, PARTIAL, PENDING, CHANGED = "done", "partial", "pending", "changed"


@dataclass(frozen=True)
class PairState:
    """Where one (checkpoint, task) pair stands."""

    task: str
    state: str                                # DONE, PARTIAL, PENDING or CHANGED
    journaled: int = 0                        # items already journaled (PARTIAL)
    changed: tuple[str, ...] = ()             # fingerprint parts that differ (CHANGED)
    score: float | None = None                # the headline score (DONE)

    def describe(self) -> str:
        if self.state == DONE:
            return f"done {self.score:.2f}" if isinstance(self.score, (int, float)) else "done"
        if self.state == PARTIAL:
            return f"partial ({self.journaled} journaled)"
        if self.state == CHANGED:
            return f"changed: {', '.join(self.changed)}"
        return "-"


@dataclass(frozen=True)
class RunOutcome:
    """What a checkpoint's run.json says of its last run (None fields: no run.json)."""

    status: str | None = None                 # done, failed, stalled, preempted, running
    updated: str | None = None
    cause: str | None = None                  # root cause of a failed/stalled run, signal of a preempted one

    def describe(self) -> str:
        if self.status is None:
            return "no run yet"
        text = self.status
        if self.cause:
            text += f": {self.cause}"
        return text


def task_inputs(config: RunConfig) -> TaskInputs:
    """Where a run with `config` reads its tasks' data (as evaluation.py resolves it)."""
    return TaskInputs(data_root=config.data_root, image_root=config.resolved_image_root, data_file=config.data,
                      metric=config.metric, allow_outside_root=config.allow_outside_root)


def expected_fingerprint(config: RunConfig, task_name: str) -> dict[str, Any]:
    """The parts of evaluation.py's fingerprint that need no model: model identity, task, generation."""
    task = get_task(task_name)
    return {"model": checkpoint_identity(config.checkpoint), "task": task.fingerprint(task_inputs(config)),
            "generation": config.generation(task.max_new_tokens).to_json()}


def fingerprint_differences(stored: Mapping[str, Any], config: RunConfig, task_name: str) -> list[str]:
    """Names of the fingerprint parts (model settings key by key) where `stored` differs from this config."""
    expected = json.loads(json.dumps(expected_fingerprint(config, task_name)))
    changed = [key for key, value in expected.items() if stored.get(key) != value]
    for key, value in (stored.get("model_settings") or {}).items():
        if key == "dtype":
            if config.dtype is not None and value != config.dtype:
                changed.append("model_settings.dtype")
        elif hasattr(config, key) and getattr(config, key) != value:
            changed.append(f"model_settings.{key}")
    return changed


def pair_state(run_dir: Path, config: RunConfig, task_name: str) -> PairState:
    """Where `task_name` stands in `run_dir` for a run with `config`."""
    task_dir = run_dir / task_name
    fingerprint = task_dir / "fingerprint.json"
    if not fingerprint.is_file():
        return PairState(task_name, PENDING)
    try:
        stored = read_json(fingerprint)
    except (OSError, ValueError):
        stored = {}
    changed = fingerprint_differences(stored if isinstance(stored, dict) else {}, config, task_name)
    if changed:
        return PairState(task_name, CHANGED, changed=tuple(changed))
    metrics = task_dir / "metrics.json"
    if metrics.is_file():
        try:
            score = read_json(metrics).get("score")
        except (OSError, ValueError, AttributeError):
            score = None
        return PairState(task_name, DONE, score=score)
    journaled = len(read_journals(task_dir))
    return PairState(task_name, PARTIAL if journaled else PENDING, journaled=journaled)


def run_outcome(run_dir: Path) -> RunOutcome:
    """The status of the last run in `run_dir` and, when it did not finish, why (from run.json)."""
    path = run_dir / "run.json"
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        return RunOutcome()
    status = manifest.get("status")
    cause = None
    if status in ("failed", "stalled") and isinstance(manifest.get("root_cause"), dict):
        cause = describe_failure(manifest["root_cause"])
    elif status == "preempted":
        cause = f"stopped by {manifest.get('stopped_by') or 'a signal'}; journals flushed"
    return RunOutcome(status=status, updated=manifest.get("updated"), cause=cause)
