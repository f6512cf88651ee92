"""Multiple-choice tasks: MMBench (with CircularEval), ScienceQA, SEED-Bench image, multi-image questions.

Every task here asks for an option letter, extracts the letter from the reply at scoring time
(`metrics.extract_option_letter`: a lone letter, a leading ``B.`` / ``(B)``, or the one option whose text
the reply contains; anything else is wrong) and scores accuracy overall, per ``category`` and, for
MMBench, per ``l2-category``. Prediction rows keep the raw reply, the options and the categories, so
``python -m launcher score`` rescores predictions.jsonl alone.

Command lines::

    python launch.py --checkpoint CKPT --task mmbench_dev_en,scienceqa_test,seed_image \
        --data-root ~/InternVL/internvl_chat
    python launch.py --checkpoint CKPT --task mmbench_dev_en_circular --data my_plain_mmbench.tsv
    python launch.py --checkpoint CKPT --task multi_image_mc --data my_multi_image.jsonl --data-root data/

Tasks (files relative to ``--data-root`` as InternVL's ``ds_collections``; max_new_tokens as its scripts):

=========================  ==============================================  ==================  ====
task                       data file                                       metric              new
=========================  ==============================================  ==================  ====
mmbench_dev_en             data/mmbench/mmbench_dev_en_20231003.tsv        circular_accuracy   100
mmbench_dev_cn             data/mmbench/mmbench_dev_cn_20231003.tsv        circular_accuracy   100
mmbench_test_en            data/mmbench/mmbench_test_en_20231003.tsv       (unscored: TSV)     100
mmbench_test_cn            data/mmbench/mmbench_test_cn_20231003.tsv       (unscored: TSV)     100
mmbench_dev_20230712       data/mmbench/mmbench_dev_20230712.tsv           circular_accuracy   100
ccbench_dev_cn             data/mmbench/CCBench_legacy.tsv                 circular_accuracy   100
mmbench_dev_en_circular    same file as mmbench_dev_en, rotations made     circular_accuracy   100
mmbench_dev_cn_circular    same file as mmbench_dev_cn, rotations made     circular_accuracy   100
scienceqa_test             data/scienceqa/scienceqa_test_img.jsonl         accuracy            100
seed_image                 data/SEED/seed.jsonl (images under data/SEED)   accuracy            100
multi_image_mc             --data FILE (JSONL, several images per item)    accuracy            50
=========================  ==============================================  ==================  ====

MMBench (InternVL's ``eval/mmbench``)
    TSV with a header: ``index`` (integer), ``question``, ``hint``, ``A`` ... ``E``, ``answer`` (dev only),
    ``category``, ``l2-category``, ``image`` (base64), and columns we ignore (``source``, ``comment``,
    ...). Prompt: the hint and a newline when there is one, the question, one line ``"\\nA. text"`` per
    non-empty option, then ``"\\n"`` and ``Answer with the option's letter from the given choices
    directly.`` (``请直接回答选项字母。`` for the Chinese files). The item id is ``str(index)``.

    * CircularEval. Official circular TSVs hold each question's rotations as rows whose ``index`` is
      ``i + k * 1000000``; rows sharing ``index % 1000000`` form one question, which is correct only if
      every row is (`metrics.all_correct_by_group`). A file without such rows has one row per question,
      and circular accuracy then equals plain accuracy, so the same metric serves both.
      The ``*_circular`` tasks make the rotations themselves from a plain TSV: a question with n options
      becomes n items, rotation k (k >= 1) with id ``"<index>@r<k>"`` and TSV index ``index + k * 1e6``,
      option i taking the text of old option (i + k) mod n (`metrics.rotate_options`); they refuse a file
      that already holds rotations. Scores per category and l2-category count questions (groups), as
      VLMEvalKit does; ``accuracy`` (every row alone) is reported beside ``circular_accuracy``.
    * Images in a VLMEvalKit TSV may be a short reference to another row's index instead of base64; we
      follow the reference. Base64 is decoded at load time, so a corrupt cell stops the run before the
      model loads.
    * Missing cells: only empty cells (and the ``nan`` pandas writes for missing values) count as missing.
      InternVL reads the file with pandas, which also drops options spelled ``None``, ``NA`` or ``null``; we
      keep those as option text.
    * Test splits have no ``answer`` column: ``score`` reports ``n_scored`` 0 on the scale "unscored" and
      `extra_outputs` gives ``predictions.tsv`` (``index, question, A.., answer (when known),
      prediction``; the prediction is the extracted letter, else the raw reply), the file MMBench's
      submission wants. Every MMBench task writes it (dev too).

ScienceQA (InternVL's ``eval/scienceqa``, Qwen-VL's ``scienceqa_test_img.jsonl``)
    JSONL: ``image`` (path relative to ``--image-root``, default ``--data-root``), ``question``, ``choices``
    (list), ``answer`` (index into choices; a letter is accepted), ``hint`` (may be empty). Prompt: hint and
    newline if any, question, ``"\\n"``, lines ``"A. choice"`` joined by newlines, ``"\\n"`` and the English
    letter instruction, stripped. Item id: ``question_id`` (or ``id``) when the line has one, else the
    line's position among the file's items (0-based). ``subject`` or ``category`` gives per-category scores.

SEED-Bench image (InternVL's ``eval/seed``)
    JSONL: ``question_id``, ``image`` (relative to ``data/SEED`` under the image root), ``text`` (the
    question with its options ``"A. ..."`` on their own lines and the instruction, sent as is), ``answer``
    (a letter). Options for text matching are read from the ``text`` lines. Per-category scores come from
    the line's ``category``, else from ``data/SEED/SEED-Bench.json`` (``question_type`` names joined on
    ``question_id``) when that file exists. InternVL compares the reply's first character only.

Multi-image multiple choice (``multi_image_mc``: Mantis-Eval / MIRB style, InternVL's ``eval/mantis_eval``)
    JSONL: ``question_id`` (or ``id``), ``images`` (a list of paths relative to the image root),
    ``question`` (``<image>`` placeholders in it become ``Image-1``, ``Image-2``, ... as InternVL's Mantis
    script does; the adapter puts one image placeholder per image before the text), ``options`` (a list,
    lettered A, B, ... in order, or a mapping letter -> text; a leading ``"(A) "`` or ``"A. "`` label is
    removed), ``answer`` (a letter or an option's exact text; optional) and optionally ``category``. Prompt:
    question, newline, option lines ``"A. text"``, newline, the letter instruction.

Common decisions: image paths are joined to the image root (or the task's image folder under it) and
normalised lexically; a path that leaves the image root is refused unless ``--allow-outside-root``.
Skipped items (``--on-bad-item skip``) count as wrong and are counted in ``n_skipped``. The tasks have one
metric each; ``--metric`` (for the generic vqa task) is refused.
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from eval_scripts.base import DataError, ImageBytes, Item, Score, Task, TaskInputs
from eval_scripts.metrics import (CIRCULAR_INDEX_STRIDE, OPTION_LETTERS, all_correct_by_group, circular_group,
                                  extract_option_letter, rotate_options)
from eval_scripts.registry import register
from eval_scripts.task_files import (FixedMetric, is_skipped, missing_data_error, non_empty_text,
                                     read_jsonl_records, refuse_metric_override, require_fields,
                                     resolve_image_path)

LETTER_INSTRUCTION_EN = "Answer with the option's letter from the given choices directly."
LETTER_INSTRUCTION_CN = "请直接回答选项字母。"
PREDICTIONS_TSV = "predictions.tsv"
# A VLMEvalKit TSV cell this short is a reference to another row's image, not base64 data.
_IMAGE_REFERENCE_MAX_CHARS = 64
_MISSING_CELLS = frozenset({"", "nan", "NaN"})


# --------------------------------------------------------------------------- shared scoring


def _text_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value)
    return None if text.strip() in _MISSING_CELLS else text


def _options_text(options: Mapping[str, str]) -> str:
    return "".join(f"\n{letter}. {text}" for letter, text in options.items())


class MultipleChoiceTask(Task):
    """Letter-answer tasks: extraction, accuracy (per row and per circular group), categories."""

    metric = FixedMetric("accuracy")
    max_new_tokens = 100
    category_keys: tuple[str, ...] = ("category",)

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        """Accuracy in percent; rotations of one question (`circular_group`) count once, correct only if
        all are. Rows without an answer are not scored (`n_scored` counts the rest)."""
        if not rows:
            raise DataError(f"task {self.name!r}: no prediction rows to score")
        scored = [row for row in rows if _text_or_none(row.get("answer")) is not None]
        skipped = sum(1 for row in rows if is_skipped(row))
        extra = self._extra_metrics(rows)
        if not scored:
            return Score(metric=self.metric, score=0.0, scale="unscored", n=len(rows), n_skipped=skipped,
                         metrics={"n_scored": 0, **extra,
                                  "note": "no reference answers (a test split): nothing scored"})
        hits: list[tuple[object, bool]] = []
        first_row_of_group: dict[object, Mapping[str, Any]] = {}
        unmatched = 0
        for row in scored:
            options = row.get("options")
            if not isinstance(options, Mapping) or not options:
                raise DataError(f"task {self.name!r}: row {row.get('id')!r} has no 'options' (predictions.jsonl "
                                f"must come from this task)")
            chosen = None if is_skipped(row) else extract_option_letter(str(row.get("prediction") or ""), options)
            unmatched += chosen is None
            group = row.get("circular_group", row.get("id"))
            first_row_of_group.setdefault(group, row)
            hits.append((group, chosen == str(row["answer"]).strip()))
        groups = all_correct_by_group(hits)
        row_accuracy = 100.0 * sum(hit for _, hit in hits) / len(hits)
        group_accuracy = 100.0 * sum(groups.values()) / len(groups)
        metrics: dict[str, Any] = {self.metric: group_accuracy if self.metric == "circular_accuracy"
                                   else row_accuracy}
        if self.metric == "circular_accuracy":
            metrics["accuracy"] = row_accuracy
            metrics["circular"] = any(count > 1 for count in Counter(group for group, _ in hits).values())
            metrics["n_questions"] = len(groups)
        for key in self.category_keys:
            totals: Counter[str] = Counter()
            correct: Counter[str] = Counter()
            for group, hit in groups.items():
                category = _text_or_none(first_row_of_group[group].get(key))
                if category is None:
                    continue
                totals[category] += 1
                correct[category] += hit
            for category in sorted(totals):
                metrics[f"{key}/{category}"] = 100.0 * correct[category] / totals[category]
        metrics.update(n_scored=len(scored), n_unmatched=unmatched, **extra)
        return Score(metric=self.metric, score=metrics[self.metric], scale="percent", metrics=metrics,
                     n=len(rows), n_skipped=skipped)

    def _extra_metrics(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {}

    def _check_inputs(self, inputs: TaskInputs) -> Path:
        refuse_metric_override(self, inputs)
        path = self.main_file(inputs)
        if not path.is_file():
            raise missing_data_error(self, path, inputs)
        return path


# --------------------------------------------------------------------------- MMBench


def _read_tsv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) rows of a TSV (quoted cells as pandas reads them)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))      # base64 images are long cells
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected a TSV with a header row)")
            rows = [(reader.line_num, cells) for cells in reader if any(cell.strip() for cell in cells)]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise DataError(f"{path}: not a readable TSV ({error})") from None
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error}") from None
    return [name.strip() for name in header], rows


@dataclass(frozen=True)
class _MMBenchRow:
    line_number: int
    index: int
    question: str
    hint: str | None
    options: dict[str, str]
    answer: str | None
    category: str | None
    l2_category: str | None
    image_cell: str


class MMBenchTask(MultipleChoiceTask):
    """MMBench / CCBench TSVs in InternVL's format, scored with CircularEval (module docstring)."""

    metric = FixedMetric("circular_accuracy")
    category_keys = ("category", "l2_category")

    def __init__(self, name: str, data: str, language: str, make_rotations: bool = False,
                 description: str = "") -> None:
        if language not in ("en", "cn"):
            raise ValueError(f"language must be 'en' or 'cn', not {language!r}")
        self.name = name
        self.files = {"data": data}
        self.language = language
        self.make_rotations = make_rotations
        self.description = description

    @property
    def instruction(self) -> str:
        return LETTER_INSTRUCTION_CN if self.language == "cn" else LETTER_INSTRUCTION_EN

    def prompt(self, item: Item) -> str:
        """InternVL's MMBench prompt: hint, question, option lines, the one-letter instruction."""
        hint = item.fields.get("hint")
        text = (f"{hint}\n" if hint else "") + item.question
        return text + _options_text(item.fields["options"]) + "\n" + self.instruction

    def load(self, inputs: TaskInputs) -> list[Item]:
        path = self._check_inputs(inputs)
        header, lines = _read_tsv(path)
        columns = {name: position for position, name in enumerate(header)}
        missing = [name for name in ("index", "question", "image", "A", "B") if name not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; an MMBench TSV has index, "
                            f"question, hint, A..E, answer (dev), category, l2-category, image (found: "
                            f"{', '.join(header)[:200]})")
        parsed = [self._parse_row(path, line_number, cells, columns) for line_number, cells in lines]
        if not parsed:
            raise DataError(f"{path}: no rows below the header")
        images = self._decode_images(path, parsed)
        if self.make_rotations:
            rotated = [row for row in parsed if row.index >= CIRCULAR_INDEX_STRIDE]
            if rotated:
                raise DataError(f"{path}:{rotated[0].line_number}: this file already holds circular copies "
                                f"(index {rotated[0].index} >= {CIRCULAR_INDEX_STRIDE}); task {self.name!r} "
                                f"makes its own rotations from a plain file. Run "
                                f"{self.name.removesuffix('_circular')!r}, which scores these rows circularly")
        items: list[Item] = []
        for row in parsed:
            rotations = range(len(row.options)) if self.make_rotations else range(1)
            for shift in rotations:
                items.append(self._item(row, shift, images[row.index], path))
        return items

    def _parse_row(self, path: Path, line_number: int, cells: list[str], columns: Mapping[str, int]) -> _MMBenchRow:
        where = f"{path}:{line_number}"

        def cell(name: str) -> str | None:
            position = columns.get(name)
            if position is None or position >= len(cells):
                return None
            return _text_or_none(cells[position])

        index_text = cell("index")
        try:
            index = int(index_text) if index_text is not None else None
        except ValueError:
            index = None
        if index is None or index < 0:
            raise DataError(f"{where}: 'index' must be a non-negative integer, found {index_text!r}")
        question = cell("question")
        if question is None:
            raise DataError(f"{where}: index {index}: empty question")
        options = {letter: text for letter in OPTION_LETTERS if (text := cell(letter)) is not None}
        if len(options) < 2:
            raise DataError(f"{where}: index {index}: fewer than two options (columns A, B, ...)")
        answer = cell("answer")
        if answer is not None:
            answer = answer.strip()
            if answer not in options:
                raise DataError(f"{where}: index {index}: answer {answer!r} is not one of the options "
                                f"{', '.join(options)}")
        image_cell = cell("image")
        if image_cell is None:
            raise DataError(f"{where}: index {index}: empty image cell")
        return _MMBenchRow(line_number, index, question, cell("hint"), options, answer, cell("category"),
                           cell("l2-category"), image_cell.strip())

    @staticmethod
    def _decode_images(path: Path, rows: Sequence[_MMBenchRow]) -> dict[int, ImageBytes]:
        seen: dict[int, int] = {}
        for row in rows:
            if row.index in seen:
                raise DataError(f"{path}:{row.line_number}: duplicate index {row.index} (first on line "
                                f"{seen[row.index]})")
            seen[row.index] = row.line_number
        cells = {row.index: row.image_cell for row in rows}
        decoded: dict[str, ImageBytes] = {}        # one ImageBytes per distinct image, shared by its rows
        images: dict[int, ImageBytes] = {}
        for row in rows:
            source_index, cell = row.index, row.image_cell
            if len(cell) <= _IMAGE_REFERENCE_MAX_CHARS and cell.isdigit():
                source_index = int(cell)
                if source_index not in cells or len(cells[source_index]) <= _IMAGE_REFERENCE_MAX_CHARS:
                    raise DataError(f"{path}:{row.line_number}: index {row.index}: image cell {cell!r} "
                                    f"refers to row index {source_index}, which holds no image")
                cell = cells[source_index]
            if cell not in decoded:
                try:
                    data = base64.b64decode(cell, validate=True)
                except (binascii.Error, ValueError) as error:
                    raise DataError(f"{path}:{row.line_number}: index {row.index}: image is not base64 "
                                    f"({error})") from None
                decoded[cell] = ImageBytes(data=data, label=f"{path.name} index {source_index}")
            images[row.index] = decoded[cell]
        return images

    def _item(self, row: _MMBenchRow, shift: int, image: ImageBytes, path: Path) -> Item:
        letters = list(row.options)
        texts = [row.options[letter] for letter in letters]
        answer_position = letters.index(row.answer) if row.answer is not None else None
        rotated, new_answer = rotate_options(texts, answer_position, shift)
        options = dict(zip(letters, rotated))
        group = circular_group(row.index)
        item_id = str(row.index) if shift == 0 else f"{row.index}@r{shift}"
        fields = {"index": row.index + shift * CIRCULAR_INDEX_STRIDE, "circular_group": group,
                  "rotation": shift if self.make_rotations else row.index // CIRCULAR_INDEX_STRIDE,
                  "question": row.question, "hint": row.hint, "options": options,
                  "category": row.category, "l2_category": row.l2_category}
        return Item(id=item_id, question=row.question, images=(image,),
                    answer=letters[new_answer] if new_answer is not None else None, fields=fields)

    # ----- the TSV of predictions (MMBench's submission format)

    def _extra_metrics(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"predictions_tsv": PREDICTIONS_TSV}

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Files to write beside predictions.jsonl: ``predictions.tsv`` (module docstring)."""
        return {PREDICTIONS_TSV: predictions_tsv(rows)}


def predictions_tsv(rows: Sequence[Mapping[str, Any]]) -> str:
    """MMBench's submission table: index, question, the options, answer (when known), prediction."""
    letters = [letter for letter in OPTION_LETTERS
               if any(letter in (row.get("options") or {}) for row in rows)]
    with_answer = any(_text_or_none(row.get("answer")) is not None for row in rows)
    header = ["index", "question", *letters, *(["answer"] if with_answer else []), "prediction"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        options = row.get("options") or {}
        reply = "" if is_skipped(row) else str(row.get("prediction") or "")
        chosen = extract_option_letter(reply, options) if options else None
        cells = [row.get("index", row.get("id")), row.get("question", "")]
        cells += [options.get(letter, "") for letter in letters]
        if with_answer:
            cells.append(row.get("answer") or "")
        cells.append(chosen if chosen is not None else reply)
        writer.writerow(cells)
    return buffer.getvalue()


# --------------------------------------------------------------------------- ScienceQA


def _letter_answer(value: Any, options: Mapping[str, str], where: str) -> str | None:
    """An answer given as a 0-based index, a letter, or (multi-image files) an option's exact text."""
    if value is None:
        return None
    letters = list(options)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(letters):
            return letters[value]
        raise DataError(f"{where}: answer index {value} is outside the {len(letters)} choices")
    if isinstance(value, str):
        text = value.strip()
        if text in options:
            return text
        if len(text) == 3 and text[0] == "(" and text[2] == ")" and text[1] in options:
            return text[1]
        by_text = [letter for letter, option in options.items() if option.strip() == text]
        if len(by_text) == 1:
            return by_text[0]
    raise DataError(f"{where}: answer {json.dumps(value)[:60]} is neither a choice index, one of the letters "
                    f"{', '.join(letters)}, nor an option's text")


def _item_id(record: Mapping[str, Any], fallback: int, where: str) -> str:
    value = record.get("question_id", record.get("id"))
    if value is None:
        return str(fallback)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"{where}: 'question_id' must be a non-empty string or an integer, found "
                        f"{json.dumps(value)[:60]}")
    return str(value)


def _check_unique(items: Iterable[tuple[Item, str]]) -> list[Item]:
    first: dict[str, str] = {}
    result = []
    for item, where in items:
        if item.id in first:
            raise DataError(f"{where}: duplicate id {item.id!r} (first at {first[item.id]})")
        first[item.id] = where
        result.append(item)
    return result


class ScienceQATask(MultipleChoiceTask):
    """ScienceQA test, image subset (InternVL's ``sqa_test``), accuracy."""

    name = "scienceqa_test"
    description = "ScienceQA test, image subset (InternVL: sqa_test), option letter, accuracy"
    files = {"data": "data/scienceqa/scienceqa_test_img.jsonl"}

    def prompt(self, item: Item) -> str:
        hint = item.fields.get("hint")
        text = (f"{hint}\n" if hint else "") + item.question
        choices = "\n".join(f"{letter}. {choice}" for letter, choice in item.fields["options"].items())
        return f"{text}\n{choices}\n{LETTER_INSTRUCTION_EN}".strip()

    def load(self, inputs: TaskInputs) -> list[Item]:
        path = self._check_inputs(inputs)
        entries = []
        for position, (line_number, record) in enumerate(read_jsonl_records(path)):
            where = f"{path}:{line_number}"
            require_fields(record, ("image", "question", "choices"), where, "image, question, choices and answer")
            choices = record["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(OPTION_LETTERS):
                raise DataError(f"{where}: 'choices' must be a list of at least two options")
            options = {OPTION_LETTERS[i]: str(choice) for i, choice in enumerate(choices)}
            question = non_empty_text(record, "question", where)
            image = resolve_image_path(record["image"], inputs, where)
            category = record.get("subject", record.get("category"))
            fields = {"question": question, "hint": _text_or_none(record.get("hint")), "options": options,
                      "image": record["image"], "category": category if isinstance(category, str) else None}
            if "question_id" in record or "id" in record:
                fields["question_id"] = record.get("question_id", record.get("id"))
            item = Item(id=_item_id(record, position, where), question=question, images=(image,),
                        answer=_letter_answer(record.get("answer"), options, where), fields=fields)
            entries.append((item, where))
        return _check_unique(entries)


# --------------------------------------------------------------------------- SEED-Bench

_OPTION_LINE = re.compile(r"^([A-Z])\.\s*(.*\S)\s*$")


def options_in_text(text: str) -> dict[str, str]:
    """Options written one per line as ``A. text`` inside a prompt (SEED's ``text``), in letter order."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        found = _OPTION_LINE.match(line.strip())
        if found and found.group(1) not in options:
            options[found.group(1)] = found.group(2)
    return options


class SEEDImageTask(MultipleChoiceTask):
    """SEED-Bench, image questions (InternVL's ``SEEDv1``), accuracy overall and per question type."""

    name = "seed_image"
    description = "SEED-Bench image (InternVL: SEEDv1), option letter, accuracy per question type"
    files = {"data": "data/SEED/seed.jsonl", "images": "data/SEED", "annotation": "data/SEED/SEED-Bench.json"}

    def prompt(self, item: Item) -> str:
        return item.question         # SEED's text already holds the options and the instruction

    def load(self, inputs: TaskInputs) -> list[Item]:
        path = self._check_inputs(inputs)
        question_types = self._question_types(inputs)
        entries = []
        for line_number, record in read_jsonl_records(path):
            where = f"{path}:{line_number}"
            require_fields(record, ("question_id", "image", "text"), where, "question_id, image, text and answer")
            text = non_empty_text(record, "text", where)
            options = options_in_text(text)
            if len(options) < 2:
                raise DataError(f"{where}: found fewer than two option lines ('A. ...') in 'text'")
            item_id = _item_id(record, line_number, where)
            category = record.get("category")
            if not isinstance(category, str):
                category = question_types.get(item_id)
            answer = record.get("answer")
            fields = {"question_id": record["question_id"], "question": text, "image": record["image"],
                      "options": options, "category": category}
            item = Item(id=item_id, question=text,
                        images=(resolve_image_path(record["image"], inputs, where, self.files["images"]),),
                        answer=_letter_answer(answer, options, where) if answer is not None else None,
                        fields=fields)
            entries.append((item, where))
        return _check_unique(entries)

    def _question_types(self, inputs: TaskInputs) -> dict[str, str]:
        """question_id -> question type name, from SEED-Bench.json when it is there (else nothing)."""
        path = self.declared_path(inputs, "annotation")
        if not path.is_file():
            return {}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            names = {int(number): name for name, number in document["question_type"].items()}
            return {str(question["question_id"]): names.get(int(question["question_type_id"]), "unknown")
                    for question in document["questions"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{path}: not SEED-Bench's annotation layout ({{'question_type': {{name: id}}, "
                            f"'questions': [{{'question_id', 'question_type_id'}}]}}): {error!r}") from None


# --------------------------------------------------------------------------- multi-image multiple choice

_OPTION_LABEL = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s*")


def _strip_option_label(text: str, letter: str) -> str:
    found = _OPTION_LABEL.match(text)
    if found and (found.group(1) or found.group(2)) == letter:
        return text[found.end():]
    return text


class MultiImageChoiceTask(MultipleChoiceTask):
    """Several images per question, one letter answer (Mantis-Eval / MIRB style JSONL)."""

    name = "multi_image_mc"
    description = "multi-image multiple choice (Mantis-Eval/MIRB-style JSONL, images: [...]), accuracy"
    files: Mapping[str, str] = {}
    max_new_tokens = 50

    def prompt(self, item: Item) -> str:
        return f"{item.question}{_options_text(item.fields['options'])}\n{LETTER_INSTRUCTION_EN}".strip()

    def load(self, inputs: TaskInputs) -> list[Item]:
        path = self._check_inputs(inputs)
        entries = []
        for position, (line_number, record) in enumerate(read_jsonl_records(path)):
            where = f"{path}:{line_number}"
            require_fields(record, ("images", "question", "options"), where,
                           "images (a list), question, options and answer")
            paths = record["images"]
            if not isinstance(paths, list) or not paths:
                raise DataError(f"{where}: 'images' must be a non-empty list of paths")
            images = tuple(resolve_image_path(entry, inputs, where) for entry in paths)
            question = non_empty_text(record, "question", where)
            options = self._options(record["options"], where)
            for number in range(1, len(images) + 1):
                question = question.replace("<image>", f"Image-{number}", 1)
            category = record.get("category")
            fields = {"question": question, "images": paths, "options": options,
                      "category": category if isinstance(category, str) else None}
            item = Item(id=_item_id(record, position, where), question=question.strip(), images=images,
                        answer=_letter_answer(record.get("answer"), options, where), fields=fields)
            entries.append((item, where))
        return _check_unique(entries)

    @staticmethod
    def _options(value: Any, where: str) -> dict[str, str]:
        if isinstance(value, list) and all(isinstance(entry, (str, int, float)) for entry in value):
            if not 2 <= len(value) <= len(OPTION_LETTERS):
                raise DataError(f"{where}: 'options' must hold at least two options")
            return {OPTION_LETTERS[i]: _strip_option_label(str(entry), OPTION_LETTERS[i]).strip()
                    for i, entry in enumerate(value)}
        if isinstance(value, dict) and len(value) >= 2 and all(key in OPTION_LETTERS for key in value):
            return {letter: _strip_option_label(str(value[letter]), letter).strip() for letter in sorted(value)}
        raise DataError(f"{where}: 'options' must be a list of option texts or a mapping from letters "
                        f"(A, B, ...) to texts, found {json.dumps(value)[:80]}")


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class MMBenchPreset:
    name: str
    data: str
    language: str
    make_rotations: bool = False
    description: str = ""

    def build(self) -> MMBenchTask:
        return MMBenchTask(self.name, self.data, self.language, self.make_rotations, self.description)


MMBENCH_PRESETS: tuple[MMBenchPreset, ...] = (
    MMBenchPreset("mmbench_dev_en", "data/mmbench/mmbench_dev_en_20231003.tsv", "en",
                  description="MMBench dev EN (20231003), CircularEval when the file holds rotations"),
    MMBenchPreset("mmbench_dev_cn", "data/mmbench/mmbench_dev_cn_20231003.tsv", "cn",
                  description="MMBench dev CN (20231003), CircularEval when the file holds rotations"),
    MMBenchPreset("mmbench_test_en", "data/mmbench/mmbench_test_en_20231003.tsv", "en",
                  description="MMBench test EN: no answers; writes predictions.tsv for submission"),
    MMBenchPreset("mmbench_test_cn", "data/mmbench/mmbench_test_cn_20231003.tsv", "cn",
                  description="MMBench test CN: no answers; writes predictions.tsv for submission"),
    MMBenchPreset("mmbench_dev_20230712", "data/mmbench/mmbench_dev_20230712.tsv", "en",
                  description="MMBench dev EN (20230712 release)"),
    MMBenchPreset("ccbench_dev_cn", "data/mmbench/CCBench_legacy.tsv", "cn",
                  description="CCBench (MMBench's Chinese-culture set), CircularEval when rotations present"),
    MMBenchPreset("mmbench_dev_en_circular", "data/mmbench/mmbench_dev_en_20231003.tsv", "en", True,
                  description="MMBench dev EN from a plain TSV, rotations made here (CircularEval)"),
    MMBenchPreset("mmbench_dev_cn_circular", "data/mmbench/mmbench_dev_cn_20231003.tsv", "cn", True,
                  description="MMBench dev CN from a plain TSV, rotations made here (CircularEval)"),
)

for _preset in MMBENCH_PRESETS:
    register(_preset.name, _preset.build)
register(ScienceQATask.name, ScienceQATask)
register(SEEDImageTask.name, SEEDImageTask)
register(MultiImageChoiceTask.name, MultiImageChoiceTask)
