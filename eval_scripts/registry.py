"""Task registry: built-in tasks register themselves by name when their module is imported."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable

from eval_scripts.base import Task
from launcher.errors import UserError

_TASKS: dict[str, Callable[[], Task]] = {}
_BUILTIN_MODULES = ("eval_scripts.vqa", "eval_scripts.synthetic", "eval_scripts.multiple_choice", "eval_scripts.pope",
                    "eval_scripts.mme", "eval_scripts.caption")


class UnknownTaskError(UserError):
    pass


def register(name: str, factory: Callable[[], Task]) -> None:
    if name in _TASKS:
        raise ValueError(f"task {name!r} registered twice")
    _TASKS[name] = factory


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def task_names() -> list[str]:
    _load_builtins()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """A fresh task object by name; unknown names get the closest match and the full list."""
    _load_builtins()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, _TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]()


def describe_tasks() -> str:
    """A table of every task: name, metric, data files (relative to --data-root) and description."""
    _load_builtins()
    rows = [("task", "metric", "files (under --data-root)", "description")]
    for name in sorted(_TASKS):
        task = _TASKS[name]()
        files = ", ".join(f"{role}={path}" for role, path in task.files.items()) or "--data FILE"
        rows.append((name, task.metric or "--metric", files, task.description))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
                     for row in rows)
