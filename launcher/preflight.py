"""Checking every image file before the model loads: missing files fail a run in seconds, not hours in.

After the data files are read (paths resolved and kept inside the image root by the task loaders) and
before the model loads, each image path is checked: it exists and is a regular file. `os.stat` waits on
the file system and releases the GIL, so a pool of threads checks many paths at once: on a network file
system 100k paths take seconds instead of minutes (bench/preflight.py measures it).

In a distributed run each process checks a contiguous share of the items and publishes what it found
on the store; every process then holds the same complete list (`check_images_everywhere`). Under
`--on-bad-item error` the run stops with one message listing the first `SHOWN` bad files with their data
file and line and the total; under `skip` the evaluation records those items as skipped at once, and
they never reach a preprocessing worker.

Images held in memory (`ImageBytes`, e.g. MMBench's base64 TSV) are not files: decoding checks them.
A file that exists but does not decode (corrupt) is found when its batch is prepared.
"""
from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from eval_scripts.base import DataError, Item

DEFAULT_THREADS = 32
SHOWN = 10
_PATHS_PER_TASK = 256        # one thread task checks this many paths: a future per path costs more than a stat


@dataclass(frozen=True)
class BadImage:
    """An item whose image file cannot be opened; `where` is the data file and line, when known."""

    index: int
    item_id: str
    path: str
    where: str
    reason: str

    def to_json(self) -> list:
        return [self.index, self.item_id, self.path, self.where, self.reason]

    @classmethod
    def from_json(cls, value: Sequence) -> BadImage:
        index, item_id, path, where, reason = value
        return cls(int(index), str(item_id), str(path), str(where), str(reason))

    def describe(self) -> str:
        origin = f"{self.where}, " if self.where else ""
        return f"{self.path} ({origin}item {self.item_id!r}): {self.reason}"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as an image file ("not found", "a directory, not a file", ...), or None."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "not found"
    except PermissionError:
        return "permission denied"
    except OSError as error:
        return f"cannot stat: {error.strerror or error}"
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def find_bad_images(items: Sequence[Item], indices: Sequence[int] | None = None,
                    threads: int = DEFAULT_THREADS) -> list[BadImage]:
    """The image files of `items` (those at `indices`, default all) that cannot be read, in item order."""
    wanted = range(len(items)) if indices is None else indices
    checks: list[tuple[int, Any]] = [(index, source) for index in wanted for source in items[index].images
                                     if isinstance(source, (str, os.PathLike))]
    groups = [checks[start:start + _PATHS_PER_TASK] for start in range(0, len(checks), _PATHS_PER_TASK)]

    def check(group: list[tuple[int, Any]]) -> list[BadImage]:
        found = []
        for index, source in group:
            reason = file_problem(source)
            if reason is not None:
                found.append(BadImage(index, items[index].id, str(source), str(getattr(source, "where", "")),
                                      reason))
        return found

    if len(groups) <= 1 or threads <= 1:
        return [bad for group in groups for bad in check(group)]
    with ThreadPoolExecutor(max_workers=min(threads, len(groups)), thread_name_prefix="preflight") as pool:
        return [bad for found in pool.map(check, groups) for bad in found]


def bad_images_error(task_name: str, bad: Sequence[BadImage], checked: int) -> DataError:
    """The `--on-bad-item error` stop: the total, the first `SHOWN` files with data file and line, the fix
    (one line when one file is bad)."""
    if len(bad) == 1:
        return DataError(f"{task_name}: image file {bad[0].describe()} (of {checked} checked before loading the "
                         "model); fix the path or --image-root, or pass --on-bad-item skip to record the item as "
                         "skipped and go on")
    files = f"{len(bad)} image files"
    shown = f"; the first {SHOWN}" if len(bad) > SHOWN else ""
    lines = [f"{task_name}: {files} cannot be read (of {checked} checked before loading the model){shown}:"]
    lines += [f"  {entry.describe()}" for entry in bad[:SHOWN]]
    if len(bad) > SHOWN:
        lines.append(f"  ... and {len(bad) - SHOWN} more")
    lines.append("Fix the paths or --image-root, or pass --on-bad-item skip to record these items as skipped "
                 "and go on.")
    return DataError("\n".join(lines))


def count_image_files(items: Sequence[Item]) -> int:
    return sum(1 for item in items for source in item.images if isinstance(source, (str, os.PathLike)))


def check_images_everywhere(task_name: str, items: Sequence[Item], rank: int, world_size: int, store,
                            wait_for: Callable[[list[str], str], None],
                            threads: int = DEFAULT_THREADS) -> list[BadImage]:
    """Check this process's contiguous share of `items`, publish it, and return every process's findings
    (the same list on every process). `wait_for(keys, what)` waits for the other processes' keys and
    stops when a peer fails."""
    from launcher.scheduler import contiguous_shard

    share = contiguous_shard(len(items), rank, world_size)
    found = find_bad_images(items, share, threads)
    if world_size == 1:
        return found
    store.set(f"preflight/{task_name}/{rank}", json.dumps([bad.to_json() for bad in found]))
    keys = [f"preflight/{task_name}/{other}" for other in range(world_size)]
    wait_for(keys, f"every process to check the image files of {task_name}")
    everything = [BadImage.from_json(value) for key in keys for value in json.loads(store.get(key))]
    return sorted(everything, key=lambda bad: bad.index)
