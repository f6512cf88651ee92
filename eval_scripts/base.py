"""What a task is: items in, prompts out, predictions scored.

A task knows its data files, how to read them into `Item`s, the prompt for an item and how to score
prediction rows. Everything distributed (sharding, batching, journals, gathering) lives in `launcher/`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


from eval_scripts.data_layout import find_declared
from launcher.errors import UserError


class DataError(UserError):
    """Bad input data: the message names the file, the line or item, and what was expected."""


@dataclass(frozen=True)
class ImageBytes:
    """An image held in memory (e.g. base64 in an MMBench TSV), with a label for error messages."""

    data: bytes
    label: str


@dataclass(frozen=True)
class Item:
    """One question to ask the model.

    `id` is unique within the task and stable across runs (journals and resume rely on it).
    `images` are file paths (already resolved against the image root) or in-memory images.
    `question` is the user text before the task's prompt template is applied.
    `answer` is the reference used by the metric (a string, a list of strings, ...), None when unknown.
    `fields` are extra values copied into predictions.jsonl so the task can rescore from that file alone.
    """

    id: str
    question: str
    images: tuple[Any, ...] = ()
    answer: Any = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInputs:
    """Where a task reads its data from (resolved from --data, --data-root, --image-root).

    `data_root` is InternVL's internvl_chat folder or its data/ folder: declared paths are looked up in
    both (`data_layout`)."""

    data_root: Path
    image_root: Path
    data_file: Path | None = None          # --data: overrides the task's main file
    metric: str | None = None               # --metric: for generic tasks
    allow_outside_root: bool = False


@dataclass(frozen=True)
class Score:
    """A task's result: the headline `score` on `scale` plus every metric computed."""

    metric: str
    score: float
    scale: str                               # "percent" or the corpus metric's own scale name
    metrics: Mapping[str, Any]
    n: int
    n_skipped: int = 0

    def to_json(self, task_name: str) -> dict[str, Any]:
        return {"task": task_name, **dataclasses.asdict(self), "metrics": dict(self.metrics)}


class Task:
    """Base class of a benchmark. Subclasses set the class attributes and override `load` and `score`."""

    name: str = ""
    description: str = ""
    files: Mapping[str, str] = {}            # role -> path relative to --data-root; "data" is the main file
    metric: str = ""
    max_new_tokens: int = 10

    def load(self, inputs: TaskInputs) -> list[Item]:
        raise NotImplementedError

    def prompt(self, item: Item) -> str:
        """The text sent with the item's images (no image placeholder: the adapter adds it)."""
        return item.question

    def prediction_row(self, item: Item, prediction: str) -> dict[str, Any]:
        """One row of predictions.jsonl: enough to rescore without the data files."""
        row: dict[str, Any] = {"id": item.id, "prediction": prediction}
        if item.answer is not None:
            row["answer"] = item.answer
        row.update(item.fields)
        return row

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        raise NotImplementedError

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Extra files written beside predictions.jsonl (file name -> text), e.g. a submission TSV."""
        return {}

    def fingerprint(self, inputs: TaskInputs) -> dict[str, Any]:
        """What must not change between a run and its resume, besides the model and generation settings."""
        return {"task": self.name, "metric": inputs.metric or self.metric,
                "data_file": str(self.main_file(inputs))}

    def main_file(self, inputs: TaskInputs) -> Path:
        """--data when given, else the declared data file under --data-root (either root style)."""
        if inputs.data_file is not None:
            return inputs.data_file
        if "data" not in self.files:
            raise DataError(f"task {self.name!r} declares no data file; pass --data FILE")
        return self.declared_path(inputs, "data")

    def declared_path(self, inputs: TaskInputs, role: str) -> Path:
        """The file or folder declared for `role`, found under --data-root whether that is InternVL's
        internvl_chat folder or its data/ folder; where it exists in neither, the first place tried."""
        return find_declared(inputs.data_root, self.files[role])
