"""Append-only prediction journals: nothing finished is ever lost.

Each process writes `out_dir/<task>/shards/rank<R>-attempt<A>.jsonl`, one JSON object per finished item,
flushed and fsynced after every batch; a later attempt never appends to an earlier attempt's file.
Reading every journal gives the finished items whatever world size, layout or schedule wrote them.
A torn last line (a process killed mid-write, a full disk) is ignored, so that item is simply redone.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from launcher.errors import UserError

_NAME = re.compile(r"^rank(\d+)-attempt(\d+)\.jsonl$")


def journal_dir(task_dir: Path) -> Path:
    return task_dir / "shards"


def journal_path(task_dir: Path, rank: int, attempt: int) -> Path:
    return journal_dir(task_dir) / f"rank{rank:05d}-attempt{attempt:04d}.jsonl"


def attempts(task_dir: Path) -> list[int]:
    """Attempt numbers that left a journal in this task folder."""
    found = set()
    directory = journal_dir(task_dir)
    if directory.is_dir():
        for path in directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.add(int(match.group(2)))
    return sorted(found)


def next_attempt(task_dir: Path) -> int:
    done = attempts(task_dir)
    return done[-1] + 1 if done else 0


class Journal:
    """One process's journal for one attempt. `append` is durable when it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": a second writer for the same rank and attempt is a bug, never silently merged.
        self._file = open(path, "x", encoding="utf-8")

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if not text:
            return
        try:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise UserError(f"cannot write the journal {self.path}: {error.strerror or error}. Everything "
                            "journaled before is intact; free space (or fix the out-dir) and rerun the same "
                            "command to resume") from None

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass  # a failed flush of a torn tail: the reader ignores torn lines

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of one journal; a torn or corrupt line is reported on stderr and skipped (its item is redone)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                print(f"note: {path}:{line_number}: partial last line ignored (interrupted write); "
                      "its item will be redone", file=sys.stderr)
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"note: {path}:{line_number}: unreadable line ignored; its item will be redone",
                      file=sys.stderr)
                continue
            if isinstance(row, dict) and "id" in row:
                yield row


def read_journals(task_dir: Path, before_attempt: int | None = None) -> dict[str, dict[str, Any]]:
    """Finished rows by id from every journal of the task (of attempts before `before_attempt`, if given).

    An id journaled twice (possible only across attempts) keeps its earliest row.
    """
    directory = journal_dir(task_dir)
    if not directory.is_dir():
        return {}
    keyed = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if not match:
            continue
        attempt = int(match.group(2))
        if before_attempt is not None and attempt >= before_attempt:
            continue
        keyed.append(((attempt, int(match.group(1))), path))
    finished: dict[str, dict[str, Any]] = {}
    for _, path in sorted(keyed):
        for row in read_journal(path):
            finished.setdefault(str(row["id"]), row)
    return finished
