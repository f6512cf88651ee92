"""A synthetic visual question answering benchmark that a tiny model can really learn.

Every item is a 64x64 picture of bold shapes (circle, square, triangle; six colours; 18-28 pixels,
one per cell of a 2x2 grid, on a light background) drawn with PIL, and one question about it with a
one-word answer. Four question types, each needing the image:

| type       | question                                           | answers                    | chance |
| ---------- | -------------------------------------------------- | -------------------------- | ------ |
| `color`    | What color is the circle?                          | 6 colours                  | 1/6    |
| `count`    | How many objects are there?                        | 1, 2, 3, 4                 | 1/4    |
| `shape`    | What shape is the red object?                      | circle, square, triangle   | 1/3    |
| `position` | Is the red object on the left or the right?        | left, right                | 1/2    |

Counting shows 1 to 4 objects; the other questions name one object and show it alone or with one
other (never the same shape for `color`, never the same colour for `shape` and `position`). The
question type cycles over the four, so a file of 300 has 75 of each.

Items are a pure function of `(seed, split, index)`: the same arguments draw the same pixels and
the same question on any machine (Python's `random.Random` seeded with a string is stable across
runs and versions). The held-out file is written by::

    python -m eval_scripts.synthetic --out demo/data/synthetic --split test --n 300 --seed 1234

which writes `demo/data/synthetic/test.jsonl` (InternVL's JSONL: `question_id`, `image` relative to
the data root, `question`, `answer`, plus `question_type`) and the PNGs under
`demo/data/synthetic/images/`. The task `synthetic_shapes` then reads it with `--data-root demo/data`.

Training never sees held-out items: the demo model's training stream (`training_stream`) uses its
own seed and split name, and drops any item whose image has the same pixels as a held-out image.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from PIL import Image, ImageDraw

from eval_scripts import registry
from eval_scripts.base import DataError, Item, Score, Task, TaskInputs
from eval_scripts.task_files import is_skipped, read_jsonl_records, resolve_image_path

IMAGE_SIZE = 64
QUESTION_TYPES = ("color", "count", "shape", "position")
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 25),
    "purple": (135, 50, 170),
    "orange": (245, 125, 20),
}
BACKGROUNDS = ((255, 255, 255), (228, 228, 228), (245, 238, 220))
COUNTS = (1, 2, 3, 4)
# Questions that name one object ("the circle", "the red object") show at most one distractor: the
# 0.65M-parameter demo model binds colour, shape and place for two objects after 8 minutes of CPU
# training; with up to three objects, anywhere, it stayed near 70% (docs/DEMO_MODEL.md).
MAX_OBJECTS_NAMED = 2
POSITIONS = ("left", "right")
ANSWERS = {
    "color": tuple(COLORS),
    "count": tuple(str(count) for count in COUNTS),
    "shape": SHAPES,
    "position": POSITIONS,
}
# Uniform guessing over a type's answers (the held-out file is balanced over answers only roughly).
CHANCE = {question_type: 1 / len(answers) for question_type, answers in ANSWERS.items()}
PROMPT_SUFFIX = " Answer the question using a single word or phrase."

HELD_OUT_SEED = 1234
HELD_OUT_SPLIT = "test"
HELD_OUT_SIZE = 300
TRAINING_SEED = 20261126
TRAINING_SPLIT = "train"

_GRID = 2                              # the image is a 2x2 grid of cells, one object at most per cell
_CELL = IMAGE_SIZE // _GRID
_MIN_SIZE, _MAX_SIZE = 18, 28          # object size in pixels: bold for 8-pixel patches
_MARGIN = 2                            # free pixels between an object and its cell's border


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]     # left, top, right, bottom (inclusive pixels)

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass(frozen=True)
class SyntheticItem:
    """One generated item before it is written to disk."""

    image: Image.Image
    question: str
    answer: str
    question_type: str
    objects: tuple[SceneObject, ...] = ()


def make_item(seed: int, split: str, index: int, *, question_type: str | None = None,
              n_objects: int | None = None) -> SyntheticItem:
    """The item number `index` of the stream `(seed, split)`.

    By default the question type cycles over the four and the number of objects is drawn uniformly
    (1 to 4 for counting, 1 to `MAX_OBJECTS_NAMED` otherwise); training may fix either.
    """
    rng = random.Random(f"synthetic-shapes/{seed}/{split}/{index}")
    if question_type is None:
        question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    if question_type not in _ITEM_MAKERS:
        raise ValueError(f"unknown question type {question_type!r}; known: {', '.join(QUESTION_TYPES)}")
    return _ITEM_MAKERS[question_type](rng, n_objects)


def _color_item(rng: random.Random, n_objects: int | None) -> SyntheticItem:
    count = n_objects or rng.randint(1, MAX_OBJECTS_NAMED)
    shapes = rng.sample(SHAPES, count)          # distinct shapes: "the circle" names one object
    colors = rng.sample(list(COLORS), count)
    objects = _place(rng, list(zip(shapes, colors)))
    target = rng.randrange(count)
    return SyntheticItem(_draw(rng, objects), f"What color is the {shapes[target]}?",
                         colors[target], "color", tuple(objects))


def _count_item(rng: random.Random, n_objects: int | None) -> SyntheticItem:
    count = n_objects or rng.choice(COUNTS)
    specs = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(count)]
    objects = _place(rng, specs)
    return SyntheticItem(_draw(rng, objects), "How many objects are there?", str(count), "count",
                         tuple(objects))


def _shape_item(rng: random.Random, n_objects: int | None) -> SyntheticItem:
    count = n_objects or rng.randint(1, MAX_OBJECTS_NAMED)
    colors = rng.sample(list(COLORS), count)    # distinct colours: "the red object" names one object
    shapes = [rng.choice(SHAPES) for _ in range(count)]
    objects = _place(rng, list(zip(shapes, colors)))
    target = rng.randrange(count)
    return SyntheticItem(_draw(rng, objects), f"What shape is the {colors[target]} object?",
                         shapes[target], "shape", tuple(objects))


def _position_item(rng: random.Random, n_objects: int | None) -> SyntheticItem:
    count = n_objects or rng.randint(1, MAX_OBJECTS_NAMED)
    colors = rng.sample(list(COLORS), count)
    shapes = [rng.choice(SHAPES) for _ in range(count)]
    side = rng.choice(POSITIONS)
    # The target is placed first, clearly on its side; the others go anywhere that is free.
    objects = _place(rng, list(zip(shapes, colors)), first_side=side)
    return SyntheticItem(_draw(rng, objects), f"Is the {colors[0]} object on the left or the right?",
                         side, "position", tuple(objects))


_ITEM_MAKERS = {"color": _color_item, "count": _count_item, "shape": _shape_item,
                "position": _position_item}


def _place(rng: random.Random, specs: Sequence[tuple[str, str]],
           first_side: str | None = None) -> list[SceneObject]:
    """One object per cell of a 2x2 grid of 32x32 cells, at a random size and offset in its cell.

    Objects never touch, and each of the 16 image tokens the model sees (16x16 pixels) shows at most
    one object: what a tiny vision tower can bind. With `first_side`, the first object goes in a cell
    of that column, so its centre is at most 22 pixels from that edge.
    """
    cells = [(column, row) for row in range(_GRID) for column in range(_GRID)]
    if first_side is None:
        chosen = rng.sample(cells, len(specs))
    else:
        column = 0 if first_side == "left" else _GRID - 1
        first = rng.choice([cell for cell in cells if cell[0] == column])
        chosen = [first] + rng.sample([cell for cell in cells if cell != first], len(specs) - 1)
    objects = []
    for (shape, color), (column, row) in zip(specs, chosen):
        size = rng.randint(_MIN_SIZE, _MAX_SIZE)
        left = column * _CELL + rng.randint(_MARGIN, _CELL - size - _MARGIN)
        top = row * _CELL + rng.randint(_MARGIN, _CELL - size - _MARGIN)
        objects.append(SceneObject(shape, color, (left, top, left + size - 1, top + size - 1)))
    return objects


def _draw(rng: random.Random, objects: Sequence[SceneObject]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    for scene_object in objects:
        # A little jitter per object so that colours are ranges, not six exact values.
        fill = tuple(max(0, min(255, channel + rng.randint(-12, 12)))
                     for channel in COLORS[scene_object.color])
        left, top, right, bottom = scene_object.box
        if scene_object.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif scene_object.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return image


def image_hash(image: Image.Image) -> str:
    """A digest of the pixels (not of the PNG bytes): equal images have equal hashes."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def held_out_hashes(seed: int = HELD_OUT_SEED, split: str = HELD_OUT_SPLIT,
                    n_items: int = HELD_OUT_SIZE) -> frozenset[str]:
    """Pixel hashes of the held-out images (generated in memory, nothing written)."""
    return frozenset(image_hash(make_item(seed, split, index).image) for index in range(n_items))


def training_stream(seed: int = TRAINING_SEED, split: str = TRAINING_SPLIT, *,
                    exclude: frozenset[str] = frozenset(), start: int = 0,
                    type_weights: Mapping[str, float] | None = None,
                    two_object_share: float | None = None) -> Iterator[SyntheticItem]:
    """An endless stream of fresh items for training, skipping any image whose hash is in `exclude`.

    `type_weights` (question type -> relative frequency) and `two_object_share` (how often a question
    naming one object shows a second one) change the mix; by default it is the held-out file's mix.
    Raises ValueError if asked for the held-out stream itself.
    """
    if (seed, split) == (HELD_OUT_SEED, HELD_OUT_SPLIT):
        raise ValueError(f"seed {seed} with split {split!r} is the held-out stream; train on another")
    types = list(type_weights) if type_weights else None
    weights = [type_weights[kind] for kind in types] if type_weights and types else None
    index = start
    while True:
        mix = random.Random(f"synthetic-shapes-mix/{seed}/{split}/{index}")
        question_type = mix.choices(types, weights)[0] if types else None
        if question_type is None and (two_object_share is not None):
            question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        n_objects = None
        if two_object_share is not None and question_type != "count":
            n_objects = 2 if mix.random() < two_object_share else 1
        item = make_item(seed, split, index, question_type=question_type, n_objects=n_objects)
        index += 1
        if exclude and image_hash(item.image) in exclude:
            continue
        yield item


def vocabulary() -> list[str]:
    """Every word of the questions, the prompt suffix and the answers (for a word-level tokenizer)."""
    texts = [PROMPT_SUFFIX, "What color is the ?", "How many objects are there?",
             "What shape is the object?", "Is the object on the left or the right?"]
    words: list[str] = []
    for text in texts:
        for word in text.replace("?", " ? ").replace(".", " . ").split():
            if word not in words:
                words.append(word)
    for answers in ANSWERS.values():
        for answer in answers:
            if answer not in words:
                words.append(answer)
    return words


def generate_benchmark(out_dir: str | Path, n_items: int, seed: int, split: str, *,
                       data_root: str | Path | None = None) -> Path:
    """Write `n_items` items: `out_dir/images/<split>_NNNNN.png` and `out_dir/<split>.jsonl`.

    Image paths in the JSONL are relative to `data_root` (default: the parent of `out_dir`, which is
    the data root of the task's layout `<data-root>/synthetic/<split>.jsonl`). Returns the JSONL path.
    """
    out_dir = Path(out_dir)
    data_root = Path(data_root) if data_root is not None else out_dir.parent
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    jsonl_path = out_dir / f"{split}.jsonl"
    temporary_path = jsonl_path.with_name(jsonl_path.name + ".tmp")
    with temporary_path.open("w", encoding="utf-8") as jsonl:
        for index in range(n_items):
            item = make_item(seed, split, index)
            image_path = image_dir / f"{split}_{index:05d}.png"
            item.image.save(image_path)
            row = {
                "question_id": index,
                "image": Path(image_path).resolve().relative_to(data_root.resolve()).as_posix(),
                "question": item.question,
                "answer": item.answer,
                "question_type": item.question_type,
            }
            jsonl.write(json.dumps(row) + "\n")
    temporary_path.replace(jsonl_path)      # a reader never sees a half-written file
    return jsonl_path


def normalize_answer(text: str) -> str:
    """Lower-case, strip, and drop one trailing period: "Red." and " red" both become "red"."""
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


class SyntheticShapesTask(Task):
    """Exact match on the synthetic shapes benchmark, overall and per question type (percent).

    `Score.metrics` holds `exact_match` (overall) and `exact_match/<type>` for each question type
    present. Skipped rows (`--on-bad-item skip`) score 0, stay in `n` and are counted in `n_skipped`.
    """

    name = "synthetic_shapes"
    description = "Synthetic shapes VQA (colour, count, shape, position); exact match"
    files = {"data": "synthetic/test.jsonl"}
    metric = "exact_match"
    max_new_tokens = 5

    _REQUIRED = {"question_id": (int, str), "image": (str,), "question": (str,), "answer": (str,),
                 "question_type": (str,)}

    def load(self, inputs: TaskInputs) -> list[Item]:
        path = self.main_file(inputs)
        if not path.is_file():
            raise DataError(f"synthetic_shapes: data file not found: {path}; generate it with "
                            f"`python -m eval_scripts.synthetic --out {path.parent} --split "
                            f"{HELD_OUT_SPLIT} --n {HELD_OUT_SIZE} --seed {HELD_OUT_SEED}`")
        items: list[Item] = []
        seen: set[str] = set()
        for line_number, row in read_jsonl_records(path):
            where = f"{path}:{line_number}"
            self._check_fields(row, where)
            item_id = str(row["question_id"])
            if item_id in seen:
                raise DataError(f"{where}: question_id {item_id!r} appears twice")
            seen.add(item_id)
            image = resolve_image_path(row["image"], inputs, where)
            items.append(Item(
                id=item_id, question=row["question"], images=(image,), answer=row["answer"],
                fields={"question_id": row["question_id"], "question_type": row["question_type"]}))
        return items

    def _check_fields(self, row: Mapping[str, Any], where: str) -> None:
        for key, types in self._REQUIRED.items():
            if key not in row:
                raise DataError(f"{where}: missing key {key!r} (expected keys: {', '.join(self._REQUIRED)})")
            if not isinstance(row[key], types) or isinstance(row[key], bool):
                raise DataError(f"{where}: {key!r} should be {' or '.join(t.__name__ for t in types)}, "
                                f"found {row[key]!r}")

    def prompt(self, item: Item) -> str:
        return item.question + PROMPT_SUFFIX

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        correct: Counter[str] = Counter()
        total: Counter[str] = Counter()
        skipped = 0
        for row in rows:
            question_type = str(row.get("question_type", "unknown"))
            total[question_type] += 1
            if is_skipped(row) or row.get("prediction") is None:  # scored as wrong, counted as skipped
                skipped += 1
                continue
            if normalize_answer(str(row["prediction"])) == normalize_answer(str(row["answer"])):
                correct[question_type] += 1
        n = sum(total.values())
        overall = 100.0 * sum(correct.values()) / n if n else 0.0
        metrics: dict[str, Any] = {"exact_match": overall}
        for question_type in sorted(total, key=_type_order):
            metrics[f"exact_match/{question_type}"] = 100.0 * correct[question_type] / total[question_type]
        return Score(metric=self.metric, score=overall, scale="percent", metrics=metrics, n=n,
                     n_skipped=skipped)


def _type_order(question_type: str) -> tuple[int, str]:
    known = QUESTION_TYPES.index(question_type) if question_type in QUESTION_TYPES else len(QUESTION_TYPES)
    return known, question_type


registry.register("synthetic_shapes", SyntheticShapesTask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval_scripts.synthetic", allow_abbrev=False,
        description="Write the synthetic shapes benchmark (PNG images + InternVL JSONL).")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for <split>.jsonl and images/ (normally <data-root>/synthetic)")
    parser.add_argument("--split", default=HELD_OUT_SPLIT, help="split name (default: %(default)s)")
    parser.add_argument("--n", type=int, default=HELD_OUT_SIZE, help="items (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="seed (default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="image paths are written relative to this (default: the parent of --out)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, found {args.n}")
    data_root = args.data_root if args.data_root is not None else args.out.parent
    if not args.out.resolve().is_relative_to(data_root.resolve()):
        parser.error(f"--out {args.out} is not inside --data-root {data_root}")
    path = generate_benchmark(args.out, args.n, args.seed, args.split, data_root=data_root)
    print(f"wrote {args.n} items to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
