"""Synthetic evaluation items with realistic and with skewed costs.

* `realistic`: VQA-like. One image per item, each resized to one tile (InternVL without `--dynamic`),
  prompts of 20-60 words: every item costs about the same (256 image tokens + 30-70 text tokens
  on a 448-pixel model), as TextVQA / GQA style runs do.
* `skewed`: `--dynamic --max-num 12`. Most items as above; a few (`heavy_fraction`, 6% by default) carry a
  3:1 image that tiles into 6x2 + a thumbnail = 13 tiles and a 300-500 word prompt, about 13 times the
  cost of a light item. The heavy items sit in the first third of the dataset (datasets are often
  ordered by source: document pages together), which is what hurts contiguous static shards.
* `distinct`: as `realistic`, but every item has an image of its own (640x480 to 1024x1024 pixels): nothing
  to share, what a set of one question per image costs.
* `pope`: POPE's shape: one tile per image, 18 short yes/no questions per image ("Is there a dog in the
  image? Please answer yes or no."), an image's questions spread over the file as in POPE's three splits.
* `docvqa`: DocVQA's shape with `--dynamic --max-num 12`: document pages whose aspect ratios tile into 6 to
  12 tiles (+ the thumbnail), about 4 questions of 5-14 words per page (3 to 5).

Images are JPEG bytes in memory (`ImageBytes`), so the DataLoader workers decode them as they would
files; a small pool of distinct images per size is shared by the items of `realistic` and `skewed` (so they
share images too: run them with `--no-prefix-sharing` to measure one question per image, or use
`distinct`). `SyntheticSet.to_files(folder)` writes every distinct image once as a JPEG file and points the
items at the files (a run from files on disk).
"""
from __future__ import annotations

import dataclasses
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from eval_scripts.base import ImageBytes, Item, Score, Task

HEAVY_GRID = (6, 2)          # columns x rows: 12 tiles + the thumbnail with max_num >= 12


@dataclass(frozen=True)
class SyntheticSet:
    """Items plus the tiling settings the adapter must use for them."""

    name: str
    items: list[Item]
    dynamic: bool
    max_num: int
    heavy_ids: frozenset[str] = frozenset()

    def describe(self) -> dict[str, Any]:
        images = {source for item in self.items for source in item.images}
        return {"name": self.name, "items": len(self.items), "dynamic": self.dynamic, "max_num": self.max_num,
                "distinct_images": len(images), "heavy_items": len(self.heavy_ids),
                "heavy_positions": sorted(i for i, item in enumerate(self.items) if item.id in self.heavy_ids)[:3]}

    def to_files(self, folder: str | Path) -> "SyntheticSet":
        """The same set with every distinct in-memory image written once to `folder` as a file, items
        pointing at the files (what a run from disk reads)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths: dict[ImageBytes, str] = {}
        items = []
        for item in self.items:
            sources = []
            for source in item.images:
                if source not in paths:
                    path = folder / f"{len(paths):06d}-{source.label}"
                    path.write_bytes(source.data)
                    paths[source] = str(path)
                sources.append(paths[source])
            items.append(dataclasses.replace(item, images=tuple(sources)))
        return dataclasses.replace(self, items=items)


class BenchTask(Task):
    """A task with nothing to score: the benchmarks only need `prediction_row`."""

    name = "bench"
    max_new_tokens = 16

    def score(self, rows: Sequence[Any]) -> Score:
        return Score(metric="none", score=0.0, scale="percent", metrics={}, n=len(rows))


def _image_pool(width: int, height: int, count: int, seed: int) -> list[ImageBytes]:
    """`count` distinct smooth-plus-noise RGB JPEGs of `width` x `height`."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(seed)
    pool = []
    for index in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([(x * (index + 1) / width) * 255, (y / height) * 255,
                         ((x + y) % 97) / 97 * 255], axis=-1)
        noisy = np.clip(base + generator.normal(0, 25, base.shape), 0, 255).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=85)
        pool.append(ImageBytes(buffer.getvalue(), f"synthetic-{width}x{height}-{seed}-{index}.jpg"))
    return pool


def _quick_image_pool(width: int, height: int, count: int, seed: int) -> list[ImageBytes]:
    """Like `_image_pool` (a gradient plus noise per image, JPEG quality 85), about 5x faster to make: integer
    noise drawn once and shifted per image. For the sets with many distinct images."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(seed)
    noise = generator.integers(-40, 41, size=(height, width, 3), dtype=np.int16)
    y = (np.arange(height, dtype=np.int16) * 255 // max(1, height - 1))[:, None]
    pool = []
    for index in range(count):
        x = (np.arange(width, dtype=np.int32) * (index % 7 + 1) * 255 // max(1, width - 1) % 256).astype(np.int16)
        base = np.stack(np.broadcast_arrays(x[None, :], y, (x[None, :] + y + 37 * index) % 256), axis=-1)
        shifted = np.roll(noise, shift=(17 * index) % height, axis=0)
        pixels = np.clip(base + shifted, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        pool.append(ImageBytes(buffer.getvalue(), f"synthetic-{width}x{height}-{seed}-{index}.jpg"))
    return pool


def _image_pools(requests: Sequence[tuple[int, int, int, int]]) -> list[list[ImageBytes]]:
    """`_quick_image_pool(*request)` for each request, in parallel processes when there is much to encode."""
    pixels = sum(width * height * count for width, height, count, _ in requests)
    if pixels < 64 * 448 * 448 or (os.cpu_count() or 1) < 3:
        return [_quick_image_pool(*request) for request in requests]
    import multiprocessing

    # Split each request into pieces of a few images, so the processes share the work evenly.
    pieces = [(width, height, min(8, count - start), seed * 100_003 + start)
              for width, height, count, seed in requests for start in range(0, count, 8)]
    with multiprocessing.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        results = pool.starmap(_quick_image_pool, pieces)
    pools, position = [], 0
    for _, _, count, _ in requests:
        chunk = []
        while len(chunk) < count:
            chunk.extend(results[position])
            position += 1
        pools.append(chunk)
    return pools


def _words(rng: random.Random, count: int) -> str:
    from launcher.tiny_models import DEFAULT_WORDS

    vocabulary = [w for w in DEFAULT_WORDS if w.isalpha()]
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def realistic(num_items: int, tile_size: int = 448, seed: int = 0, pool_size: int = 8) -> SyntheticSet:
    """One tile and 20-60 words per item (module docstring)."""
    rng = random.Random(seed)
    sizes = [(tile_size, tile_size), (tile_size * 10 // 7, tile_size * 15 // 14), (tile_size * 8 // 7, tile_size)]
    pools = [_image_pool(w, h, pool_size, seed + i) for i, (w, h) in enumerate(sizes)]
    items = [Item(id=f"r{index:05d}", question=_words(rng, rng.randint(20, 60)),
                  images=(rng.choice(rng.choice(pools)),)) for index in range(num_items)]
    return SyntheticSet("realistic", items, dynamic=False, max_num=6)


def skewed(num_items: int, tile_size: int = 448, seed: int = 0, heavy_fraction: float = 0.06,
           pool_size: int = 8) -> SyntheticSet:
    """Mostly one-tile items, a few 13-tile items with long prompts in the first third (module docstring)."""
    rng = random.Random(seed)
    light_pool = _image_pool(tile_size, tile_size, pool_size, seed)
    heavy_pool = _image_pool(tile_size * HEAVY_GRID[0], tile_size * HEAVY_GRID[1], max(2, pool_size // 4), seed + 100)
    num_heavy = max(1, round(num_items * heavy_fraction))
    heavy_positions = set(rng.sample(range(max(num_heavy, num_items // 3)), num_heavy))
    items, heavy_ids = [], set()
    for index in range(num_items):
        if index in heavy_positions:
            item = Item(id=f"s{index:05d}", question=_words(rng, rng.randint(300, 500)),
                        images=(rng.choice(heavy_pool),))
            heavy_ids.add(item.id)
        else:
            item = Item(id=f"s{index:05d}", question=_words(rng, rng.randint(20, 60)),
                        images=(rng.choice(light_pool),))
        items.append(item)
    return SyntheticSet("skewed", items, dynamic=True, max_num=12, heavy_ids=frozenset(heavy_ids))


def distinct(num_items: int, tile_size: int = 448, seed: int = 0) -> SyntheticSet:
    """One tile and 20-60 words per item, one image per item (module docstring)."""
    rng = random.Random(seed)
    sizes = [(tile_size * 10 // 7, tile_size * 15 // 14), (tile_size * 16 // 7, tile_size * 16 // 7),
             (tile_size * 8 // 7, tile_size)]          # 640x480, 1024x1024, 512x448 at 448-pixel tiles
    counts = [num_items // len(sizes) + (1 if i < num_items % len(sizes) else 0) for i in range(len(sizes))]
    pools = _image_pools([(w, h, count, seed + 10 * i) for i, ((w, h), count) in enumerate(zip(sizes, counts))])
    images = [image for pool in pools for image in pool]
    rng.shuffle(images)
    items = [Item(id=f"d{index:05d}", question=_words(rng, rng.randint(20, 60)), images=(image,))
             for index, image in enumerate(images)]
    return SyntheticSet("distinct", items, dynamic=False, max_num=6)


POPE_OBJECTS = ("dog", "cat", "car", "bus", "tree", "person", "chair", "cup", "bottle", "book", "bird", "ball",
                "plane", "train", "table", "house", "man", "woman", "child", "sign", "box", "heart", "star")


def pope(num_items: int, tile_size: int = 448, seed: int = 0, questions_per_image: int = 18) -> SyntheticSet:
    """POPE's shape: 1 tile, `questions_per_image` yes/no questions per image (module docstring)."""
    rng = random.Random(seed)
    num_images = max(1, -(-num_items // questions_per_image))
    (images,) = _image_pools([(tile_size * 10 // 7, tile_size * 15 // 14, num_images, seed + 500)])
    questions = [(image, f"Is there a {rng.choice(POPE_OBJECTS)} in the image? Please answer yes or no.")
                 for image in images for _ in range(questions_per_image)][:num_items]
    # POPE's files list an image's questions apart (random, popular and adversarial splits, positives and
    # negatives): spread them, so the schedule has to gather them.
    rng.shuffle(questions)
    items = [Item(id=f"p{index:05d}", question=question, images=(image,))
             for index, (image, question) in enumerate(questions)]
    return SyntheticSet("pope", items, dynamic=False, max_num=6)


# Page grids (columns x rows) of 6 to 12 tiles: InternVL's tiling picks the grid of the closest aspect ratio.
DOCUMENT_GRIDS = ((2, 3), (2, 4), (3, 3), (2, 5), (3, 4), (4, 3))


def docvqa(num_items: int, tile_size: int = 448, seed: int = 0) -> SyntheticSet:
    """DocVQA's shape: `--dynamic --max-num 12`, pages of 6-12 tiles, 3-5 questions each (module docstring)."""
    rng = random.Random(seed)
    counts: list[int] = []
    while sum(counts) < num_items:
        counts.append(rng.randint(3, 5))
    counts[-1] -= sum(counts) - num_items
    grids = [DOCUMENT_GRIDS[index % len(DOCUMENT_GRIDS)] for index in range(len(counts))]
    per_grid = {grid: grids.count(grid) for grid in DOCUMENT_GRIDS if grid in grids}
    pools = dict(zip(per_grid, _image_pools([(tile_size * c, tile_size * r, n, seed + 700 + i)
                                              for i, ((c, r), n) in enumerate(per_grid.items())])))
    used = {grid: 0 for grid in per_grid}
    items = []
    for page, (grid, count) in enumerate(zip(grids, counts)):
        image = pools[grid][used[grid]]
        used[grid] += 1
        for _ in range(count):
            question = "What is the " + _words(rng, rng.randint(4, 13)) + "?"
            items.append(Item(id=f"v{len(items):05d}", question=question, images=(image,)))
    rng.shuffle(items)
    return SyntheticSet("docvqa", items, dynamic=True, max_num=12)


SETS = ("realistic", "skewed", "distinct", "pope", "docvqa")


def make_set(name: str, num_items: int, tile_size: int = 448, seed: int = 0) -> SyntheticSet:
    builders = {"realistic": realistic, "skewed": skewed, "distinct": distinct, "pope": pope, "docvqa": docvqa}
    if name not in builders:
        raise ValueError(f"unknown set {name!r}: {', '.join(SETS)}")
    return builders[name](num_items, tile_size, seed)
