"""POPE (object hallucination, yes/no questions on COCO) in InternVL's ``eval/pope`` layout.

Files (relative to ``--data-root``, as InternVL's README lays them out)::

    data/pope/llava_pope_test.jsonl          questions: question_id, image, text, category
    data/pope/val2014/                       COCO val2014 images (``image`` is a file name in here)
    data/pope/coco/coco_pope_{adversarial,popular,random}.json   POPE's labels (JSON lines with "label")

Command line::

    python launch.py --checkpoint CKPT --task pope --data-root ~/InternVL/internvl_chat

Prompt: the line's ``text``, which in LLaVA's file already ends with ``Answer the question using a single
word or phrase.`` (InternVL asserts that and sends it unchanged); a text without that instruction gets it on
a new line. ``max_new_tokens`` 100 as InternVL.

Answers and labels (decisions):

* A reply is read as POPE's ``eval_pope.py`` reads it (`metrics.pope_answer`): "no" when the first sentence
  holds the word ``no``, ``No`` or ``not``, otherwise "yes" (so an empty or unrelated reply counts as "yes").
* Labels come from the question line's ``label`` (or ``answer``) when it has one, else from
  ``coco/coco_pope_<category>.json``: the k-th question of a category takes that file's k-th label, as
  InternVL's script pairs them by position. We check that both name the same image and refuse files whose
  counts or images disagree (the reference script would silently score against shifted labels). A count
  mismatch is nearly always POPE's current label files beside LLaVA's question file: that question file
  goes with POPE commit e3e3926 (the one InternVL's README downloads; 3000/3000/2910 labels), while
  POPE's later ``coco_pope_random.json`` holds 3000; the error names both files, both counts and the
  label file to download.
* Scores per category (adversarial, popular, random, or whatever categories the file has): accuracy,
  precision, recall, F1 and yes-ratio with "yes" as the positive class (`metrics.binary_classification_stats`),
  in percent. The headline ``f1`` is the mean of the categories' F1, InternVL's "Overall F1"; ``accuracy``
  beside it is the mean of the categories' accuracies. A ratio whose denominator is zero is 0.
* Image paths are joined to ``data/pope/val2014`` under ``--image-root`` (default ``--data-root``).
* Skipped items (``--on-bad-item skip``) count as answered wrongly (the opposite of their label).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval_scripts.base import DataError, Item, Score, Task, TaskInputs
from eval_scripts.data_layout import describe_candidates, find_declared
from eval_scripts.metrics import binary_classification_stats, pope_answer
from eval_scripts.task_files import (FixedMetric, is_skipped, missing_data_error, read_jsonl_records,
                                          refuse_metric_override, require_fields, resolve_image_path)
from eval_scripts.registry import register

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
POPE_CATEGORIES = ("adversarial", "popular", "random")
# The POPE revision whose label files match LLaVA's llava_pope_test.jsonl (pinned by InternVL's and LLaVA's
# evaluation docs); POPE's later files differ (coco_pope_random.json: 2910 labels there, 3000 later).
POPE_LABELS_COMMIT = "e3e39262c85a6a83f26cf5094022a782cb0df58d"
POPE_LABELS_URL = ("https://github.com/AoiDragon/POPE/raw/" + POPE_LABELS_COMMIT
                   + "/output/coco/coco_pope_{category}.json")


def label_count_mismatch(label_file: Path, n_labels: int, question_file: Path, n_questions: int,
                         category: str) -> str:
    """Why a label file and a question file that disagree in length cannot be paired, and which to use."""
    direction = "more" if n_labels > n_questions else "fewer"
    return (f"POPE label file {label_file} holds {n_labels} labels but the question file {question_file} has "
            f"{n_questions} {category!r} questions ({direction} labels than questions); labels are paired with "
            f"questions by position, so both files must come from the same POPE version. InternVL's "
            f"llava_pope_test.jsonl goes with POPE's labels at commit {POPE_LABELS_COMMIT[:7]} (its "
            f"coco_pope_random.json holds 2910 labels; later POPE commits hold 3000): replace {label_file.name} "
            f"with {POPE_LABELS_URL.format(category=category)}, as InternVL's eval/pope/README.md downloads it, "
            f"or give questions that carry their own 'label' with --data FILE")


def _label(value: Any, where: str) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in ("yes", "no"):
        raise DataError(f"{where}: a POPE label must be 'yes' or 'no', found {json.dumps(value)[:40]}")
    return text


class POPETask(Task):
    """POPE with InternVL's files: F1, accuracy, precision, recall and yes-ratio per category."""

    name = "pope"
    description = "POPE (COCO adversarial/popular/random), yes/no; mean F1 over categories"
    files = {"data": "data/pope/llava_pope_test.jsonl", "images": "data/pope/val2014",
             "annotation": "data/pope/coco"}
    metric = FixedMetric("f1")
    max_new_tokens = 100

    def prompt(self, item: Item) -> str:
        text = item.question.strip()
        return text if SHORT_ANSWER_PROMPT in text else f"{text}\n{SHORT_ANSWER_PROMPT}"

    def load(self, inputs: TaskInputs) -> list[Item]:
        refuse_metric_override(self, inputs)
        path = self.main_file(inputs)
        if not path.is_file():
            raise missing_data_error(self, path, inputs)
        lines = read_jsonl_records(path)
        labels = self._labels_by_position(inputs, path, lines)
        items: list[Item] = []
        first_line: dict[str, int] = {}
        for line_number, record in lines:
            where = f"{path}:{line_number}"
            require_fields(record, ("question_id", "image", "text", "category"), where,
                           "question_id, image, text and category")
            question_id = record["question_id"]
            if isinstance(question_id, bool) or not isinstance(question_id, (int, str)) or question_id == "":
                raise DataError(f"{where}: 'question_id' must be a non-empty string or an integer")
            item_id = str(question_id)
            if item_id in first_line:
                raise DataError(f"{where}: duplicate question_id {item_id!r} (first on line {first_line[item_id]})")
            first_line[item_id] = line_number
            text = record["text"]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: empty text")
            inline = record.get("label", record.get("answer"))
            label = _label(inline, where) if inline is not None else labels[line_number]
            image = resolve_image_path(record["image"], inputs, where, self.files["images"])
            items.append(Item(id=item_id, question=text, images=(image,), answer=label,
                              fields={"question_id": question_id, "category": str(record["category"]),
                                      "image": record["image"]}))
        return items

    def _labels_by_position(self, inputs: TaskInputs, path: Path,
                            lines: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, str]:
        """line number -> label, from coco_pope_<category>.json by position within each category."""
        needing = [(line_number, record) for line_number, record in lines
                   if record.get("label", record.get("answer")) is None]
        if not needing:
            return {}
        by_category: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for line_number, record in needing:
            by_category[str(record.get("category"))].append((line_number, record))
        labels: dict[int, str] = {}
        for category, questions in by_category.items():
            declared = f"{self.files['annotation']}/coco_pope_{category}.json"
            label_file = find_declared(inputs.data_root, declared)
            if not label_file.is_file():
                raise DataError(f"{path}:{questions[0][0]}: no label for this {category!r} question and no "
                                f"label file: tried {describe_candidates(inputs.data_root, declared)} (POPE's "
                                f"coco_pope_<category>.json; pass --data-root DIR: InternVL's internvl_chat "
                                f"folder or its data/ folder)")
            answers = read_jsonl_records(label_file)
            if len(answers) != len(questions):
                raise DataError(label_count_mismatch(label_file, len(answers), path, len(questions), category))
            for (line_number, record), (label_line, answer) in zip(questions, answers):
                if "image" in answer and answer["image"] != record.get("image"):
                    raise DataError(f"{label_file}:{label_line}: label for image {answer['image']!r} is paired "
                                    f"with question {path}:{line_number} on image {record.get('image')!r}; "
                                    f"the files are not in the same order")
                labels[line_number] = _label(answer.get("label"), f"{label_file}:{label_line}")
        return labels

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        """Per-category POPE statistics in percent; headline: mean F1 over categories."""
        if not rows:
            raise DataError(f"task {self.name!r}: no prediction rows to score")
        predicted: dict[str, list[bool]] = defaultdict(list)
        truth: dict[str, list[bool]] = defaultdict(list)
        for row in rows:
            label = row.get("answer")
            if label not in ("yes", "no"):
                raise DataError(f"task {self.name!r}: row {row.get('id')!r} has no 'yes'/'no' answer")
            category = str(row.get("category", "all"))
            said_yes = (label == "no") if is_skipped(row) else pope_answer(str(row.get("prediction") or "")) == "yes"
            predicted[category].append(said_yes)
            truth[category].append(label == "yes")
        order = [name for name in POPE_CATEGORIES if name in truth] + sorted(set(truth) - set(POPE_CATEGORIES))
        metrics: dict[str, Any] = {}
        per_category = {}
        for category in order:
            stats = binary_classification_stats(predicted[category], truth[category])
            per_category[category] = stats
            for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                metrics[f"{category}/{key}"] = 100.0 * stats[key]
            metrics[f"{category}/n"] = len(truth[category])
        f1 = sum(stats["f1"] for stats in per_category.values()) / len(per_category) * 100.0
        accuracy = sum(stats["accuracy"] for stats in per_category.values()) / len(per_category) * 100.0
        metrics = {"f1": f1, "accuracy": accuracy, **metrics}
        return Score(metric=self.metric, score=f1, scale="percent", metrics=metrics, n=len(rows),
                     n_skipped=sum(1 for row in rows if is_skipped(row)))


register(POPETask.name, POPETask)
