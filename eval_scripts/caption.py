"""Image captioning (COCO Karpathy test, Flickr30k Karpathy test, NoCaps val) scored with pycocoevalcap.

Files (relative to ``--data-root``, as InternVL's ``eval/caption`` README lays them out):

=================== ================================================ =========================================
task                data file (``--data``)                           images / references
=================== ================================================ =========================================
coco_karpathy_test  data/coco/annotations/coco_karpathy_test.json    images under data/coco/; references from
                                                                     data/coco/annotations/coco_karpathy_test_gt.json
flickr30k_test      data/flickr30k/flickr30k_test_karpathy.json      images under data/flickr30k/
nocaps_val          data/nocaps/nocaps_val_4500_captions.json        images under data/nocaps/images/
=================== ================================================ =========================================

Command line::

    pip install pycocoevalcap        # and a Java runtime: its PTB tokenizer and METEOR run java
    python launch.py --checkpoint CKPT --task coco_karpathy_test,flickr30k_test,nocaps_val \
        --data-root ~/InternVL/internvl_chat

Two data layouts are read (chosen by the file's shape):

* a JSON list (COCO Karpathy, BLIP's layout): ``{"image": "val2014/COCO_val2014_000000391895.jpg",
  "caption": [...]}``; the image id is the number at the end of the file name, as InternVL computes it.
  References come from the task's ``annotation`` file (COCO format) when it exists, else from the entries'
  ``caption`` lists.
* a COCO-format object (Flickr30k, NoCaps, any COCO captions file): ``{"images": [{"id", "file_name" (or
  "image")}], "annotations": [{"image_id", "caption"}]}``; references are its own annotations.

Prompt: ``Provide a one-sentence caption for the provided image.`` (InternVL's); ``max_new_tokens`` 30.
InternVL also sets ``min_new_tokens`` 8, which our generation settings do not have. Item ids are the image
ids as text; each prediction row holds the reference captions as ``answer``, so rescoring needs no data.

Metrics (`metrics.caption_scores`): CIDEr (the headline), BLEU-1..4, METEOR and ROUGE-L, as
pycocoevalcap's ``COCOEvalCap`` computes them over the whole set, each multiplied by 100 as papers report
them (the scale is named "CIDEr x100"); ``average_length`` is the mean words per caption, which InternVL
prints. SPICE is left out (it downloads Stanford CoreNLP models at run time). Without pycocoevalcap or
Java, ``score`` stops with a message saying what to install; predictions.jsonl is written before scoring,
so ``python -m launcher score`` can score it later elsewhere. Skipped items score as empty captions.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval_scripts.base import DataError, Item, Score, Task, TaskInputs
from eval_scripts.metrics import caption_scores
from eval_scripts.task_files import (FixedMetric, is_skipped, missing_data_error, refuse_metric_override,
                                          resolve_image_path)
from eval_scripts.registry import register

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
_METRIC_ORDER = ("CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None


def _coco_image_id(file_name: str, where: str) -> int:
    """InternVL's rule for COCO Karpathy entries: the number after the last underscore of the file name."""
    stem = Path(file_name).stem
    try:
        return int(stem.split("_")[-1])
    except ValueError:
        raise DataError(f"{where}: cannot read an image id from {file_name!r} (expected names like "
                        f"COCO_val2014_000000391895.jpg)") from None


def _coco_references(document: Any, path: Path) -> dict[str, list[str]]:
    """image id (as text) -> reference captions, from a COCO captions document."""
    try:
        references: dict[str, list[str]] = defaultdict(list)
        for annotation in document["annotations"]:
            references[str(annotation["image_id"])].append(str(annotation["caption"]))
        return dict(references)
    except (KeyError, TypeError) as error:
        raise DataError(f"{path}: not a COCO captions file ({{'annotations': [{{'image_id', 'caption'}}]}}): "
                        f"problem near {error!r}") from None


class CaptionTask(Task):
    """A captioning benchmark: one caption per image, COCO caption metrics over the set."""

    metric = FixedMetric("CIDEr")
    max_new_tokens = 30

    def __init__(self, name: str, files: Mapping[str, str], description: str = "") -> None:
        self.name = name
        self.files = dict(files)
        self.description = description

    def prompt(self, item: Item) -> str:
        return CAPTION_PROMPT

    def load(self, inputs: TaskInputs) -> list[Item]:
        refuse_metric_override(self, inputs)
        path = self.main_file(inputs)
        if not path.is_file():
            raise missing_data_error(self, path, inputs)
        document = _read_json(path)
        if isinstance(document, list):
            entries = self._karpathy_entries(document, path, inputs)
        elif isinstance(document, dict) and "images" in document:
            entries = self._coco_entries(document, path)
        else:
            raise DataError(f"{path}: expected a JSON list of {{'image', 'caption'}} entries or a COCO captions "
                            f"object with 'images' and 'annotations'")
        if not entries:
            raise DataError(f"{path}: no images")
        items: list[Item] = []
        seen: set[str] = set()
        for entry in entries:
            if entry.image_id in seen:
                raise DataError(f"{path}: image id {entry.image_id} appears twice")
            seen.add(entry.image_id)
            if not entry.references:
                raise DataError(f"{path}: image id {entry.image_id} ({entry.file_name}) has no reference captions")
            image = resolve_image_path(entry.file_name, inputs, f"{path} image id {entry.image_id}",
                                       self.files.get("images", ""))
            items.append(Item(id=entry.image_id, question=CAPTION_PROMPT, images=(image,),
                              answer=list(entry.references),
                              fields={"image_id": entry.raw_id, "image": entry.file_name}))
        return items

    def _karpathy_entries(self, document: list, path: Path, inputs: TaskInputs) -> list["_Entry"]:
        references: dict[str, list[str]] = {}
        annotation = self.declared_path(inputs, "annotation") if "annotation" in self.files else None
        if annotation is not None and annotation.is_file():
            references = _coco_references(_read_json(annotation), annotation)
        entries = []
        for position, entry in enumerate(document):
            where = f"{path} entry {position}"
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise DataError(f"{where}: expected an object with an 'image' path")
            raw_id = _coco_image_id(entry["image"], where)
            captions = references.get(str(raw_id))
            if captions is None:
                listed = entry.get("caption")
                captions = [listed] if isinstance(listed, str) else list(listed or [])
            entries.append(_Entry(str(raw_id), raw_id, entry["image"], [str(caption) for caption in captions]))
        return entries

    @staticmethod
    def _coco_entries(document: dict, path: Path) -> list["_Entry"]:
        references = _coco_references(document, path)
        entries = []
        for position, image in enumerate(document["images"]):
            where = f"{path} images[{position}]"
            if not isinstance(image, dict) or "id" not in image:
                raise DataError(f"{where}: expected an object with 'id' and 'file_name'")
            file_name = image.get("file_name", image.get("image"))
            if not isinstance(file_name, str):
                raise DataError(f"{where}: no 'file_name' (or 'image') path")
            entries.append(_Entry(str(image["id"]), image["id"], file_name, references.get(str(image["id"]), [])))
        return entries

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        """CIDEr (headline), BLEU-1..4, METEOR, ROUGE-L over all rows, x100; needs pycocoevalcap and Java."""
        if not rows:
            raise DataError(f"task {self.name!r}: no prediction rows to score")
        predictions: dict[str, str] = {}
        references: dict[str, list[str]] = {}
        for row in rows:
            key = str(row.get("id"))
            answer = row.get("answer")
            if isinstance(answer, str):
                answer = [answer]
            if not answer:
                raise DataError(f"task {self.name!r}: row {key!r} has no reference captions")
            predictions[key] = "" if is_skipped(row) else str(row.get("prediction") or "")
            references[key] = [str(caption) for caption in answer]
        raw = caption_scores(predictions, references)
        metrics: dict[str, Any] = {name: 100.0 * raw[name] for name in _METRIC_ORDER}
        metrics["average_length"] = sum(len(text.split()) for text in predictions.values()) / len(predictions)
        return Score(metric=self.metric, score=metrics["CIDEr"], scale="CIDEr x100", metrics=metrics,
                     n=len(rows), n_skipped=sum(1 for row in rows if is_skipped(row)))


@dataclass(frozen=True)
class _Entry:
    image_id: str            # the item id
    raw_id: Any              # as in the file (an integer for COCO)
    file_name: str
    references: list[str]


CAPTION_TASKS = (
    CaptionTask("coco_karpathy_test", {"data": "data/coco/annotations/coco_karpathy_test.json",
                                       "annotation": "data/coco/annotations/coco_karpathy_test_gt.json",
                                       "images": "data/coco"},
                "COCO Karpathy test (5,000 images), CIDEr/BLEU-4/METEOR/ROUGE-L (needs pycocoevalcap, Java)"),
    CaptionTask("flickr30k_test", {"data": "data/flickr30k/flickr30k_test_karpathy.json", "images": "data/flickr30k"},
                "Flickr30k Karpathy test (1,000 images), CIDEr/BLEU-4/METEOR/ROUGE-L"),
    CaptionTask("nocaps_val", {"data": "data/nocaps/nocaps_val_4500_captions.json", "images": "data/nocaps/images"},
                "NoCaps val (4,500 images), CIDEr/BLEU-4/METEOR/ROUGE-L"),
)


def _factory(task: CaptionTask):
    return lambda: CaptionTask(task.name, task.files, task.description)


for _task in CAPTION_TASKS:
    register(_task.name, _factory(_task))
