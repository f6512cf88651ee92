"""Task registry: built-in tasks register themselves by name when their module is imported."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable

from eval_scripts.base import Task

_TASKS: dict[str, Callable[[], Task]] = {}
_BUILTIN_MODULES = ("eval_scripts.vqa", "eval_scripts.synthetic")


class UnknownTaskError(ValueError):
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
