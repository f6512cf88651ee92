"""MME (14 yes/no subtasks, two questions per image) in InternVL's ``eval/mme`` layout.

Files (relative to InternVL's ``internvl_chat`` folder; ``--data-root`` may be that folder or its ``data/``
folder, from which the question lists are found at ``<data-root>/../eval/mme/Your_Results``: see
`eval_scripts.data_layout`)::

    eval/mme/Your_Results/<subtask>.txt                       the question lists InternVL ships (14 files)
    data/mme/MME_Benchmark_release_version/<subtask>/<image>  the images (InternVL's README)

Each line of a question list is ``image<TAB>question<TAB>Yes|No``. ``--data`` may name that folder or a
single ``<subtask>.txt`` (the subtask is the file's name). Images are looked up in
``<image root>/data/mme/MME_Benchmark_release_version/<subtask>/`` and, when the image is not there, in its
``images/`` subfolder (the layout of MME's own release for artwork, celebrity, landmark, posters and scene).

Command line::

    python launch.py --checkpoint CKPT --task mme --data-root ~/InternVL/internvl_chat

Prompt: the question, a space, ``Answer the question using a single word or phrase.`` (InternVL's
``eval.py``); ``max_new_tokens`` 20 as there. Item ids are ``<subtask>/<image>/q<k>`` (k = 0, 1: the
question's order among those on its image).

Scoring (`metrics.mme_answer`, `metrics.mme_subtask_scores`, `metrics.mme_totals`), as InternVL's
post-processing followed by MME's ``calculation.py``:

* a reply becomes "yes", "no" or "other" ("other" is wrong);
* per subtask: ``acc`` (percent of questions right), ``acc_plus`` (percent of images with both questions
  right) and ``score = acc + acc_plus``;
* ``perception`` is the sum of the 10 perception subtasks' scores (existence, count, position, color,
  posters, celebrity, scene, landmark, artwork, OCR; at most 2000), ``cognition`` of the 4 cognition ones
  (commonsense_reasoning, numerical_calculation, text_translation, code_reasoning; at most 800). The headline
  ``mme_total`` is their sum, on its own scale ("MME total", at most 2800), the number InternVL's tables
  report as MME. A run over some subtasks only sums those present (``n_subtasks`` says how many); subtasks
  with other names are scored but belong to neither total.
* MME's reference pairs consecutive lines into an image's two questions; we group by (subtask, image), the
  same thing for the released lists. Skipped items count as wrong.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval_scripts.base import DataError, Item, Score, Task, TaskInputs
from eval_scripts.metrics import MME_COGNITION, MME_PERCEPTION, mme_answer, mme_subtask_scores, mme_totals
from eval_scripts.task_files import (FixedMetric, is_skipped, missing_data_error, refuse_metric_override,
                                          resolve_image_path)
from eval_scripts.registry import register

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION


def _subtask_order(name: str) -> tuple[int, str]:
    return (MME_SUBTASKS.index(name) if name in MME_SUBTASKS else len(MME_SUBTASKS), name)


class MMETask(Task):
    """MME: acc and acc+ per subtask, perception and cognition totals."""

    name = "mme"
    description = "MME (14 yes/no subtasks), acc + acc+ per subtask; perception + cognition total"
    files = {"data": "eval/mme/Your_Results", "images": "data/mme/MME_Benchmark_release_version"}
    metric = FixedMetric("mme_total")
    max_new_tokens = 20

    def prompt(self, item: Item) -> str:
        return f"{item.question} {SHORT_ANSWER_PROMPT}"

    def load(self, inputs: TaskInputs) -> list[Item]:
        refuse_metric_override(self, inputs)
        path = self.main_file(inputs)
        if path.is_dir():
            lists = sorted(path.glob("*.txt"), key=lambda file: _subtask_order(file.stem))
            if not lists:
                raise DataError(f"{path}: no <subtask>.txt question lists in this folder")
        elif path.is_file():
            lists = [path]
        else:
            raise missing_data_error(self, path, inputs)
        items: list[Item] = []
        for question_list in lists:
            items += self._read_list(question_list, inputs)
        return items

    def _read_list(self, path: Path, inputs: TaskInputs) -> list[Item]:
        subtask = path.stem
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error})") from None
        except OSError as error:
            raise DataError(f"cannot read question list {path}: {error}") from None
        folder = f"{self.files['images']}/{subtask}"
        items: list[Item] = []
        seen_per_image: dict[str, int] = defaultdict(int)
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            parts = line.rstrip("\r").split("\t")
            if len(parts) != 3:
                raise DataError(f"{where}: expected 3 tab-separated fields (image, question, Yes/No), found "
                                f"{len(parts)}")
            image_name, question, reference = (part.strip() for part in parts)
            if reference.lower() not in ("yes", "no"):
                raise DataError(f"{where}: the answer must be Yes or No, found {reference!r}")
            if not question:
                raise DataError(f"{where}: empty question")
            image = resolve_image_path(image_name, inputs, where, folder)
            if not os.path.exists(image):
                nested = resolve_image_path(image_name, inputs, where, f"{folder}/images")
                image = nested if os.path.exists(nested) else image
            k = seen_per_image[image_name]
            seen_per_image[image_name] += 1
            items.append(Item(id=f"{subtask}/{image_name}/q{k}", question=question, images=(image,),
                              answer=reference.lower(),
                              fields={"subtask": subtask, "image": image_name, "question": question}))
        if not items:
            raise DataError(f"{path}: no questions")
        return items

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        """Per-subtask acc / acc+ / score, the perception and cognition totals and their sum."""
        if not rows:
            raise DataError(f"task {self.name!r}: no prediction rows to score")
        by_subtask: dict[str, list[tuple[object, str, str]]] = defaultdict(list)
        for row in rows:
            reference = str(row.get("answer") or "").lower()
            if reference not in ("yes", "no") or "subtask" not in row or "image" not in row:
                raise DataError(f"task {self.name!r}: row {row.get('id')!r} lacks subtask, image or a yes/no "
                                f"answer (predictions.jsonl must come from this task)")
            answer = "other" if is_skipped(row) else mme_answer(str(row.get("prediction") or ""))
            by_subtask[str(row["subtask"])].append((row["image"], reference, answer))
        metrics: dict[str, Any] = {}
        subtask_scores: dict[str, float] = {}
        for subtask in sorted(by_subtask, key=_subtask_order):
            scores = mme_subtask_scores(by_subtask[subtask])
            subtask_scores[subtask] = scores["score"]
            for key in ("score", "acc", "acc_plus"):
                metrics[f"{subtask}/{key}"] = scores[key]
        totals = mme_totals(subtask_scores)
        metrics = {"mme_total": totals["total"], "perception": totals["perception"],
                   "cognition": totals["cognition"], "n_subtasks": len(subtask_scores), **metrics}
        return Score(metric=self.metric, score=totals["total"], scale="MME total", metrics=metrics, n=len(rows),
                     n_skipped=sum(1 for row in rows if is_skipped(row)))


register(MMETask.name, MMETask)
