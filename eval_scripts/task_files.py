"""Reading task files: JSONL records and image paths, with errors that name the file and line.

Shared by every task family (vqa, multiple choice, POPE, MME, captioning, the synthetic benchmark), so a
bad line or an image path that leaves the image root reads the same everywhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from eval_scripts.base import DataError, Task, TaskInputs
from eval_scripts.data_layout import DATA_FOLDER, describe_candidates, image_relative_path
from launcher.errors import UserError


def missing_data_error(task: Task, path: Path, inputs: TaskInputs, role: str = "data") -> DataError:
    """The error for a task file that does not exist: every place tried and the flag that fixes it."""
    declared = task.files.get(role)
    if inputs.data_file is not None and role == "data":
        return DataError(f"{role} file not found: {path} (check --data)")
    if not declared:
        return DataError(f"{role} file not found: {path} (pass --data FILE)")
    return DataError(f"{role} file not found for task {task.name!r}: tried "
                     f"{describe_candidates(inputs.data_root, declared)}; pass --data-root DIR (InternVL's "
                     f"internvl_chat folder or its {DATA_FOLDER}/ folder)"
                     + (" or --data FILE" if role == "data" else ""))


def read_jsonl_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; errors name the file and line."""
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg} at column "
                                    f"{error.colno})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{line_number}: expected a JSON object, found "
                                    f"{type(record).__name__}")
                records.append((line_number, record))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; this task reads a JSONL file (--data FILE)") from None
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error}") from None
    if not records:
        raise DataError(f"{path}: no items (the file holds no JSON lines)")
    return records


def require_fields(record: Mapping[str, Any], keys: tuple[str, ...], where: str, needs: str) -> None:
    """DataError naming the line when `record` lacks any of `keys`; `needs` says what each line must hold."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}; each line needs {needs}")


def non_empty_text(record: Mapping[str, Any], key: str, where: str) -> str:
    """`record[key]` when it is a string with more than whitespace, else DataError: "<where>: empty <key>"."""
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: empty {key}")
    return value


class ImagePath(type(Path())):
    """An image path that remembers where it was read (`where`: data file and line), so the image check
    before loading (launcher/preflight.py) can name the line of a missing file. Otherwise a plain path:
    equal to, and hashed as, the same `Path`; paths derived from it (and copies sent to other processes)
    carry no origin."""

    where = ""


def resolve_image_path(relative: Any, inputs: TaskInputs, where: str, folder: str = "") -> Path:
    """`relative` joined to ``<image root>/<folder>`` and normalised lexically (symlinks are not followed:
    InternVL's layout links shared image folders); outside the image root is refused unless
    --allow-outside-root. InternVL's ``data/...`` paths also work when the image root is its data/ folder
    (`data_layout.image_relative_path`). `where` names the file and line for errors, and stays with the
    returned `ImagePath`."""
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{where}: an image must be a non-empty path, found {json.dumps(relative)[:80]}")
    image_root = Path(os.path.abspath(inputs.image_root))
    joined = image_relative_path(image_root, os.path.normpath(os.path.join(folder, relative)))
    candidate = Path(os.path.normpath(image_root / joined))
    if not inputs.allow_outside_root and not candidate.is_relative_to(image_root):
        raise DataError(f"{where}: image path {relative!r} resolves to {candidate}, outside the image root "
                        f"{image_root} (set --image-root, or pass --allow-outside-root to trust this file)")
    path = ImagePath(candidate)
    path.where = where
    return path


class FixedMetric:
    """A task's one metric, as a class attribute: reading gives its name; assigning another name (what the
    rescoring command does with --metric) raises UserError instead of scoring with an unknown metric."""

    def __init__(self, metric_name: str) -> None:
        self.metric_name = metric_name

    def __get__(self, instance: Any, owner: type) -> str:
        return self.metric_name

    def __set__(self, instance: Any, value: str) -> None:
        if value != self.metric_name:
            raise UserError(f"task {getattr(instance, 'name', '?')!r} has a fixed metric ({self.metric_name}); "
                            f"--metric applies to the generic vqa task only")


def refuse_metric_override(task: Task, inputs: TaskInputs) -> None:
    if inputs.metric and inputs.metric != task.metric:
        raise UserError(f"task {task.name!r} has a fixed metric ({task.metric}); --metric applies to the "
                        f"generic vqa task only")


def is_skipped(row: Mapping[str, Any]) -> bool:
    """The runner marks items it could not run (--on-bad-item skip) with the reason in `skipped`."""
    return row.get("skipped") not in (None, False)
