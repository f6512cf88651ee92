"""A synthetic visual question answering benchmark that a tiny model can really learn.

Every item is a small picture of bold shapes drawn with PIL and one question about it, with a
one-word answer. Four question types, each needing the image:

| type       | question                                           | answers                    | chance |
| ---------- | -------------------------------------------------- | -------------------------- | ------ |
| `color`    | What color is the circle?                          | 6 colours                  | 1/6    |
| `count`    | How many objects are there?                        | 1, 2, 3, 4                 | 1/4    |
| `shape`    | What shape is the red object?                      | circle, square, triangle   | 1/3    |
| `position` | Is the red object on the left or the right?        | left, right                | 1/2    |

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
# Questions that name one object ("the circle", "the red object") show at most one distractor: a
# tiny vision tower binds colour, shape and place reliably for two objects, not yet for three.
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

_MIN_SIZE, _MAX_SIZE = 16, 24          # object size in pixels: bold enough for 8-pixel patches
_GAP = 2                               # free pixels kept between objects
_LEFT_LIMIT, _RIGHT_LIMIT = 26, 38     # a "left" object's centre is below 26, a "right" one above 38


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


def make_item(seed: int, split: str, index: int) -> SyntheticItem:
    """The item number `index` of the stream `(seed, split)`; the question type cycles over the four."""
    rng = random.Random(f"synthetic-shapes/{seed}/{split}/{index}")
    question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    return _ITEM_MAKERS[question_type](rng)


def _color_item(rng: random.Random) -> SyntheticItem:
    count = rng.randint(1, MAX_OBJECTS_NAMED)
    shapes = rng.sample(SHAPES, count)          # distinct shapes: "the circle" names one object
    colors = rng.sample(list(COLORS), count)
    objects = _place(rng, list(zip(shapes, colors)))
    target = rng.randrange(count)
    return SyntheticItem(_draw(rng, objects), f"What color is the {shapes[target]}?",
                         colors[target], "color", tuple(objects))


def _count_item(rng: random.Random) -> SyntheticItem:
    count = rng.choice(COUNTS)
    specs = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(count)]
    objects = _place(rng, specs)
    return SyntheticItem(_draw(rng, objects), "How many objects are there?", str(count), "count",
                         tuple(objects))


def _shape_item(rng: random.Random) -> SyntheticItem:
    count = rng.randint(1, MAX_OBJECTS_NAMED)
    colors = rng.sample(list(COLORS), count)    # distinct colours: "the red object" names one object
    shapes = [rng.choice(SHAPES) for _ in range(count)]
    objects = _place(rng, list(zip(shapes, colors)))
    target = rng.randrange(count)
    return SyntheticItem(_draw(rng, objects), f"What shape is the {colors[target]} object?",
                         shapes[target], "shape", tuple(objects))


def _position_item(rng: random.Random) -> SyntheticItem:
    count = rng.randint(1, MAX_OBJECTS_NAMED)
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
    """Non-overlapping boxes for `specs`, by rejection sampling (always succeeds for 4 objects)."""
    while True:
        placed: list[SceneObject] = []
        for position, (shape, color) in enumerate(specs):
            for _attempt in range(200):
                size = rng.randint(_MIN_SIZE, _MAX_SIZE)
                left = rng.randint(1, IMAGE_SIZE - size - 1)
                top = rng.randint(1, IMAGE_SIZE - size - 1)
                box = (left, top, left + size - 1, top + size - 1)
                center_x = left + (size - 1) / 2
                if position == 0 and first_side == "left" and center_x >= _LEFT_LIMIT:
                    continue
                if position == 0 and first_side == "right" and center_x <= _RIGHT_LIMIT:
                    continue
                if all(_apart(box, other.box) for other in placed):
                    placed.append(SceneObject(shape, color, box))
                    break
            else:
                break                                   # crowded: start the scene again
        if len(placed) == len(specs):
            return placed


def _apart(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> bool:
    return (box[2] + _GAP < other[0] or other[2] + _GAP < box[0]
            or box[3] + _GAP < other[1] or other[3] + _GAP < box[1])


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
                    exclude: frozenset[str] = frozenset(), start: int = 0) -> Iterator[SyntheticItem]:
    """An endless stream of fresh items for training, skipping any image whose hash is in `exclude`.

    Raises ValueError if asked for the held-out stream itself.
    """
    if (seed, split) == (HELD_OUT_SEED, HELD_OUT_SPLIT):
        raise ValueError(f"seed {seed} with split {split!r} is the held-out stream; train on another")
    index = start
    while True:
        item = make_item(seed, split, index)
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
    present. Rows whose `prediction` is None count as skipped.
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
        image_root = Path(inputs.image_root).resolve()
        items: list[Item] = []
        seen: set[str] = set()
        with path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                row = self._parse_line(line, path, line_number)
                item_id = str(row["question_id"])
                if item_id in seen:
                    raise DataError(f"{path}:{line_number}: question_id {item_id!r} appears twice")
                seen.add(item_id)
                image = self._resolve_image(row["image"], image_root, inputs.allow_outside_root,
                                            path, line_number)
                items.append(Item(
                    id=item_id, question=row["question"], images=(image,), answer=row["answer"],
                    fields={"question_id": row["question_id"], "question_type": row["question_type"]}))
        return items

    def _parse_line(self, line: str, path: Path, line_number: int) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_number}: expected a JSON object, found {type(row).__name__}")
        for key, types in self._REQUIRED.items():
            if key not in row:
                raise DataError(f"{path}:{line_number}: missing key {key!r} (expected keys: "
                                f"{', '.join(self._REQUIRED)})")
            if not isinstance(row[key], types) or isinstance(row[key], bool):
                raise DataError(f"{path}:{line_number}: {key!r} should be "
                                f"{' or '.join(t.__name__ for t in types)}, found {row[key]!r}")
        return row

    @staticmethod
    def _resolve_image(relative: str, image_root: Path, allow_outside_root: bool,
                       path: Path, line_number: int) -> Path:
        image = (image_root / relative).resolve()
        if not allow_outside_root and not image.is_relative_to(image_root):
            raise DataError(f"{path}:{line_number}: image {relative!r} resolves outside the image "
                            f"root {image_root}; pass --allow-outside-root if that is intended")
        return image

    def prompt(self, item: Item) -> str:
        return item.question + PROMPT_SUFFIX

    def score(self, rows: Sequence[Mapping[str, Any]]) -> Score:
        correct: Counter[str] = Counter()
        total: Counter[str] = Counter()
        skipped = 0
        for row in rows:
            if row.get("prediction") is None:
                skipped += 1
                continue
            question_type = str(row.get("question_type", "unknown"))
            total[question_type] += 1
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
