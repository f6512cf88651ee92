"""VQA-style tasks on InternVL's JSONL files: the generic `vqa` task and InternVL's presets.

Data format (InternVL's ``eval/vqa`` files, converted by Qwen-VL/InternVL): one JSON object per line with
``question_id`` (string or integer), ``image`` (a path relative to ``--image-root``, which defaults to
``--data-root``; a list of paths is accepted too), ``question`` and optionally ``answer`` (a string or a list
of strings). Other keys with scalar values are copied into predictions.jsonl. Blank lines are ignored.

Command lines::

    python launch.py --checkpoint CKPT --task textvqa_val,docvqa_val --data-root ~/InternVL/internvl_chat
    python launch.py --checkpoint CKPT --task vqa --data my_set.jsonl --metric anls

Presets (files relative to InternVL's ``internvl_chat`` folder, as its ``ds_collections``; ``--data-root`` may be
that folder or its ``data/`` folder, see `eval_scripts.data_layout`; prompts and
``max_new_tokens`` as its ``evaluate_vqa.py``):

=======================  ===================  =================  ===============  ========================
task                     metric               prompt suffix      max_new_tokens   InternVL's --max-num tip
=======================  ===================  =================  ===============  ========================
textvqa_val              vqa_accuracy         short answer       10               6
vqav2_val                vqa_accuracy         short answer       10               6
okvqa_val                vqa_accuracy         short answer       10               6
vizwiz_val               vqa_accuracy         unanswerable +     10               6
                                              short answer
docvqa_val               anls                 short answer       100              18
infovqa_val              anls                 short answer       100              24
chartqa_test_human       relaxed_accuracy     short answer       100              12
chartqa_test_augmented   relaxed_accuracy     short answer       100              12
ai2diagram_test          exact_match          none               10               6
gqa_testdev              gqa_accuracy         short answer       10               6
=======================  ===================  =================  ===============  ========================

The prompt is the question, a space and the suffix (no suffix: the question alone). "short answer" is
``Answer the question using a single word or phrase.``; VizWiz puts
``When the provided information is insufficient, respond with 'Unanswerable'.`` before it. The
image placeholder and chat template are the adapter's job. The generic ``vqa`` task uses the short-answer
suffix. The ``--max-num`` column is the README's advice (``recommended_max_num``); nothing applies it.

Decisions:

* Where the answers come from. The converted JSONL of VQAv2, OK-VQA, TextVQA and VizWiz holds only the
  majority answer, while VQA accuracy needs the 10 annotator answers, which InternVL reads from the
  annotation file. A preset that declares an ``annotation`` file reads the answers from it (joined on
  ``question_id``) whenever it exists, so predictions.jsonl carries the full answer lists and rescoring
  needs no data files. When that file is absent the JSONL answers are used, except that for
  ``vqa_accuracy`` a single-string answer is refused (it would silently score against one answer); a
  preset also refuses items without any answer at load time, before any GPU time is spent. The generic
  task takes the JSONL answers as they are (missing ones only fail at scoring time).
  Annotation formats: VQA (``{"annotations": [{"question_id", "answers": [{"answer"}]}]}``), RRC DocVQA /
  InfographicVQA (``{"data": [{"questionId", "answers": [...]}]}``), GQA questions
  (``{question_id: {"answer": ...}}``).
* ``gqa_testdev`` reads ``llava_gqa_testdev_balanced_qwen_format.jsonl``, the file InternVL's
  ``evaluate.sh vqa-gqa-testdev`` runs (its ``gqa_testdev_llava`` entry), and scores against GQA's
  ``testdev_balanced_questions.json`` as GQA's ``eval.py`` does. ``infovqa_val`` is InternVL's
  ``infographicsvqa_val``.
* Item ids are ``str(question_id)``; a line without ``question_id`` is an error (every InternVL file has
  one), so are duplicate ids (the error names both lines), a line that is not a JSON object, a missing or
  empty ``question`` and a missing ``image``.
* Image paths are joined to the image root and normalised lexically (``..`` collapsed, symlinks not
  followed: InternVL's layout links ``data/vqav2/val2014`` to a shared COCO folder, which must keep working).
  A path that leaves the root (``../``, an absolute path elsewhere) is refused unless
  ``--allow-outside-root``. Images are not opened or even checked here; the runner opens them.
* A prediction row is the base row (``id``, ``prediction``, ``answer``) plus ``question_id`` (its original
  type), ``question``, ``image``, ``metric`` and the line's other keys that hold scalars.
* ``--metric`` also overrides a preset's metric. Every prediction row records the metric name, so
  ``score`` can rescore predictions.jsonl alone; a metric chosen with ``select_metric`` or by assigning
  ``task.metric`` (the rescoring command's ``--metric``) wins over the rows' record.
* Skipped items (rows whose ``skipped`` holds the reason or ``true``, from ``--on-bad-item skip``) score 0
  and stay in ``n``; ``n_skipped`` counts them. Skipping items therefore never raises a score.
* Not supported: InternVL's ``--few-shot`` (it samples examples from the train files) and its test splits
  without local scoring (``vqav2_testdev``, ``docvqa_test``, ...).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eval_scripts.base import DataError, Item, Score, Task, TaskInputs
from eval_scripts.metrics import METRICS, mean_percent
from eval_scripts.registry import register
from eval_scripts.data_layout import describe_candidates
from eval_scripts.task_files import (is_skipped, missing_data_error, non_empty_text, read_jsonl_records,
                                     require_fields, resolve_image_path)
from launcher.errors import UserError

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
VIZWIZ_PROMPT = ("When the provided information is insufficient, respond with 'Unanswerable'. "
                 + SHORT_ANSWER_PROMPT)

# Keys of a prediction row that a data file's extra keys must not overwrite.
_RESERVED_ROW_KEYS = frozenset({"id", "prediction", "answer", "skipped", "error", "metric",
                                "question_id", "question", "image"})


def _known_metrics_message(name: str) -> str:
    close = difflib.get_close_matches(name, METRICS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown metric {name!r}.{hint} Known metrics: {', '.join(sorted(METRICS))} (--metric NAME)"


def _file_error(path: Path, line_number: int | None, message: str) -> DataError:
    where = f"{path}:{line_number}" if line_number is not None else str(path)
    return DataError(f"{where}: {message}")


def _reference_text(value: Any) -> str | None:
    """A reference answer as text (numbers written out), or None when it is not a scalar."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _parse_answer(value: Any, path: Path, line_number: int) -> str | list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        answers = [_reference_text(entry) for entry in value]
        if not answers or any(answer is None for answer in answers):
            raise _file_error(path, line_number, f"'answer' must be a string or a non-empty list of "
                                                 f"strings, found {json.dumps(value)[:80]}")
        return answers  # type: ignore[return-value]
    answer = _reference_text(value)
    if answer is None:
        raise _file_error(path, line_number, f"'answer' must be a string or a list of strings, "
                                             f"found {type(value).__name__}")
    return answer


def _item_id(value: Any, path: Path, line_number: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value):
        raise _file_error(path, line_number, f"'question_id' must be a non-empty string or an integer, "
                                             f"found {json.dumps(value)[:80]}")
    return str(value)


@dataclass(frozen=True)
class _Line:
    """One parsed data line, before answers from an annotation file are joined in."""

    line_number: int
    item: Item


class VQATask(Task):
    """A VQA benchmark on an InternVL JSONL file: short free-form answers scored per item."""

    def __init__(self, name: str, *, files: Mapping[str, str] | None = None, metric: str = "",
                 prompt_suffix: str = SHORT_ANSWER_PROMPT, max_new_tokens: int = 10,
                 annotation_format: str | None = None, recommended_max_num: int = 6,
                 description: str = "") -> None:
        self.name = name
        self.files = dict(files or {})
        self._default_metric = metric
        self._selected_metric: str | None = None   # --metric, through load, select_metric or assignment
        self.prompt_suffix = prompt_suffix
        self.max_new_tokens = max_new_tokens
        self.annotation_format = annotation_format
        self.recommended_max_num = recommended_max_num
        self.description = description

    # ------------------------------------------------------------------ configuration

    @property
    def is_preset(self) -> bool:
        return "data" in self.files

    @property
    def metric(self) -> str:  # type: ignore[override]
        """The chosen metric, else the task's own ("" for the generic task before --metric)."""
        return self._selected_metric or self._default_metric

    @metric.setter
    def metric(self, name: str) -> None:
        # Assigning a metric (as the rescoring command does) is an explicit choice, like --metric.
        self.select_metric(name)

    def select_metric(self, name: str | None) -> str:
        """Choose the metric (``--metric``, else the task's own); unknown names get the known list."""
        chosen = name or self.metric
        if not chosen:
            raise UserError(f"task {self.name!r} needs --metric NAME, one of: {', '.join(sorted(METRICS))}")
        if chosen not in METRICS:
            raise UserError(f"task {self.name!r}: {_known_metrics_message(chosen)}")
        self._selected_metric = chosen
        return chosen

    def prompt(self, item: Item) -> str:
        """InternVL's prompt: the question, then a space and the task's instruction when it has one."""
        if not self.prompt_suffix:
            return item.question
        return f"{item.question} {self.prompt_suffix}"

    # ------------------------------------------------------------------ loading

    def load(self, inputs: TaskInputs) -> list[Item]:
        """Read the JSONL (and the annotation file when declared) into items, in file order."""
        metric = self.select_metric(inputs.metric)
        path = self.main_file(inputs)
        if not path.is_file():
            raise missing_data_error(self, path, inputs)
        lines = self._read_lines(path, inputs, metric)
        items = self._attach_references(lines, path, inputs, metric)
        if not items:
            raise DataError(f"{path}: no items (the file holds no JSON lines)")
        return items

    def _read_lines(self, path: Path, inputs: TaskInputs, metric: str) -> list[_Line]:
        parsed: list[_Line] = []
        first_line_of: dict[str, int] = {}
        for line_number, record in read_jsonl_records(path):
            item = self._parse_record(record, path, line_number, inputs, metric)
            if item.id in first_line_of:
                raise _file_error(path, line_number,
                                  f"duplicate question_id {item.id!r} (first on line "
                                  f"{first_line_of[item.id]}, again on line {line_number})")
            first_line_of[item.id] = line_number
            parsed.append(_Line(line_number, item))
        return parsed

    def _parse_record(self, record: dict[str, Any], path: Path, line_number: int, inputs: TaskInputs,
                      metric: str) -> Item:
        require_fields(record, ("question_id", "image", "question"), f"{path}:{line_number}",
                       "question_id, image and question")
        item_id = _item_id(record["question_id"], path, line_number)
        where = f"{path}:{line_number}: item {item_id!r}"
        question = non_empty_text(record, "question", where)
        relative_paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
        if not relative_paths:
            raise DataError(f"{where}: 'image' must be a path or a list of paths, found []")
        images = tuple(resolve_image_path(relative, inputs, where) for relative in relative_paths)
        fields: dict[str, Any] = {"question_id": record["question_id"], "question": question,
                                  "image": record["image"], "metric": metric}
        for key, value in record.items():
            if key not in _RESERVED_ROW_KEYS and (value is None or isinstance(value, (str, int, float, bool))):
                fields[key] = value
        return Item(id=item_id, question=question, images=images,
                    answer=_parse_answer(record.get("answer"), path, line_number), fields=fields)

    # ------------------------------------------------------------------ reference answers

    def _attach_references(self, lines: list[_Line], path: Path, inputs: TaskInputs,
                           metric: str) -> list[Item]:
        items = [line.item for line in lines]
        annotation_path = self.declared_path(inputs, "annotation") if "annotation" in self.files else None
        if annotation_path is not None and annotation_path.is_file():
            references = _read_annotation(annotation_path, self.annotation_format or "vqa")
            joined = []
            for line in lines:
                if line.item.id not in references:
                    raise _file_error(path, line.line_number,
                                      f"question_id {line.item.id!r} is not in the annotation file "
                                      f"{annotation_path}")
                joined.append(_with_answer(line.item, references[line.item.id]))
            return joined
        if not self.is_preset:
            return items
        missing_note = (f" and the annotation file is missing (tried "
                        f"{describe_candidates(inputs.data_root, self.files['annotation'])})"
                        if annotation_path is not None else "")
        for line in lines:
            answer = line.item.answer
            if answer is None:
                raise _file_error(path, line.line_number,
                                  f"item {line.item.id!r} has no 'answer'{missing_note}; task {self.name!r} "
                                  f"cannot be scored without reference answers")
            if metric == "vqa_accuracy" and isinstance(answer, str):
                raise _file_error(path, line.line_number,
                                  f"item {line.item.id!r} has a single answer{missing_note}; VQA accuracy "
                                  f"needs the annotators' answer lists (put the annotation file in place, "
                                  f"or use --task vqa --metric vqa_accuracy to score single answers)")
        return items

    # ------------------------------------------------------------------ scoring

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        """Mean per-item metric in percent; skipped rows score 0 and are counted in `n_skipped`."""
        if not rows:
            raise DataError(f"task {self.name!r}: no prediction rows to score")
        metric = self._metric_for_rows(rows)
        item_metric: Callable[[str, Any], float] = METRICS[metric]
        values: list[float] = []
        skipped = 0
        for row in rows:
            row_id = row.get("id", "?")
            # The runner writes the reason ("skipped": "cannot read image ..."); true is accepted too.
            if is_skipped(row):
                skipped += 1
                values.append(0.0)
                continue
            prediction, answer = row.get("prediction"), row.get("answer")
            if not isinstance(prediction, str):
                raise DataError(f"task {self.name!r}: row {row_id!r} has no prediction text")
            if answer is None or answer == [] or answer == "":
                raise DataError(f"task {self.name!r}: row {row_id!r} has no reference answer "
                                f"(a test split without answers cannot be scored here)")
            values.append(float(item_metric(prediction, answer)))
        value = mean_percent(values)
        return Score(metric=metric, score=value, scale="percent", metrics={metric: value},
                     n=len(rows), n_skipped=skipped)

    def _metric_for_rows(self, rows: Sequence[Mapping[str, Any]]) -> str:
        if self._selected_metric is not None:
            return self._selected_metric
        recorded = {row["metric"] for row in rows if "metric" in row}
        if len(recorded) > 1:
            raise DataError(f"task {self.name!r}: prediction rows name several metrics "
                            f"({', '.join(sorted(map(str, recorded)))}); choose one with --metric")
        return self.select_metric(recorded.pop() if recorded else None)


def _with_answer(item: Item, answer: str | list[str]) -> Item:
    return Item(id=item.id, question=item.question, images=item.images, answer=answer, fields=item.fields)


def _read_annotation(path: Path, annotation_format: str) -> dict[str, str | list[str]]:
    """question id (as text) -> reference answer(s), from one of the supported annotation formats."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {path} is not valid JSON: {error}") from None
    except OSError as error:
        raise DataError(f"cannot read annotation file {path}: {error}") from None
    expected = {
        "vqa": '{"annotations": [{"question_id": ..., "answers": [{"answer": ...}, ...]}, ...]}',
        "docvqa": '{"data": [{"questionId": ..., "answers": [...]}, ...]}',
        "gqa": '{"<question id>": {"answer": ...}, ...}',
    }[annotation_format]
    references: dict[str, str | list[str]] = {}
    try:
        if annotation_format == "vqa":
            for entry in document["annotations"]:
                references[str(entry["question_id"])] = [str(answer["answer"]) for answer in entry["answers"]]
        elif annotation_format == "docvqa":
            for entry in document["data"]:
                references[str(entry["questionId"])] = [str(answer) for answer in entry["answers"]]
        else:
            for question_id, entry in document.items():
                references[str(question_id)] = str(entry["answer"])
    except (KeyError, TypeError, AttributeError) as error:
        raise DataError(f"annotation file {path} does not have the expected layout {expected} "
                        f"(problem near {error!r})") from None
    return references


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class VQAPreset:
    """One of InternVL's VQA datasets: files under --data-root, metric, prompt and generation length."""

    name: str
    data: str
    metric: str
    max_new_tokens: int
    prompt_suffix: str = SHORT_ANSWER_PROMPT
    annotation: str | None = None
    annotation_format: str | None = None
    recommended_max_num: int = 6
    description: str = ""

    def build(self) -> VQATask:
        files = {"data": self.data}
        if self.annotation is not None:
            files["annotation"] = self.annotation
        return VQATask(self.name, files=files, metric=self.metric, prompt_suffix=self.prompt_suffix,
                       max_new_tokens=self.max_new_tokens, annotation_format=self.annotation_format,
                       recommended_max_num=self.recommended_max_num, description=self.description)


PRESETS: tuple[VQAPreset, ...] = (
    VQAPreset("textvqa_val", "data/textvqa/textvqa_val.jsonl", "vqa_accuracy", 10,
              annotation="data/textvqa/textvqa_val_annotations.json", annotation_format="vqa",
              description="TextVQA val (5,000 questions), VQA accuracy"),
    VQAPreset("vqav2_val", "data/vqav2/vqav2_val.jsonl", "vqa_accuracy", 10,
              annotation="data/vqav2/v2_mscoco_val2014_annotations.json", annotation_format="vqa",
              description="VQAv2 val, VQA accuracy"),
    VQAPreset("okvqa_val", "data/okvqa/okvqa_val.jsonl", "vqa_accuracy", 10,
              annotation="data/okvqa/mscoco_val2014_annotations.json", annotation_format="vqa",
              description="OK-VQA val, VQA accuracy"),
    VQAPreset("vizwiz_val", "data/vizwiz/vizwiz_val.jsonl", "vqa_accuracy", 10,
              prompt_suffix=VIZWIZ_PROMPT,
              annotation="data/vizwiz/vizwiz_val_annotations.json", annotation_format="vqa",
              description="VizWiz val, VQA accuracy, 'Unanswerable' instruction"),
    VQAPreset("docvqa_val", "data/docvqa/val.jsonl", "anls", 100,
              annotation="data/docvqa/val/val_v1.0.json", annotation_format="docvqa",
              recommended_max_num=18, description="DocVQA val, ANLS"),
    VQAPreset("infovqa_val", "data/infographicsvqa/val.jsonl", "anls", 100,
              annotation="data/infographicsvqa/infographicsVQA_val_v1.0_withQT.json",
              annotation_format="docvqa", recommended_max_num=24,
              description="InfographicVQA val (InternVL: infographicsvqa_val), ANLS"),
    VQAPreset("chartqa_test_human", "data/chartqa/test_human.jsonl", "relaxed_accuracy", 100,
              recommended_max_num=12, description="ChartQA test, human-written questions, relaxed accuracy"),
    VQAPreset("chartqa_test_augmented", "data/chartqa/test_augmented.jsonl", "relaxed_accuracy", 100,
              recommended_max_num=12, description="ChartQA test, generated questions, relaxed accuracy"),
    VQAPreset("ai2diagram_test", "data/ai2diagram/test_vlmevalkit.jsonl", "exact_match", 10,
              prompt_suffix="", description="AI2D test (VLMEvalKit split), option letter, exact match"),
    VQAPreset("gqa_testdev", "data/gqa/llava_gqa_testdev_balanced_qwen_format.jsonl", "gqa_accuracy", 10,
              annotation="data/gqa/testdev_balanced_questions.json", annotation_format="gqa",
              description="GQA testdev balanced (InternVL: gqa_testdev_llava), accuracy"),
)


def generic_vqa_task() -> VQATask:
    """The `vqa` task: any InternVL-format JSONL given with --data, scored with --metric."""
    return VQATask("vqa", description="any InternVL-format VQA JSONL: --data FILE --metric NAME")


register("vqa", generic_vqa_task)
for _preset in PRESETS:
    register(_preset.name, _preset.build)
