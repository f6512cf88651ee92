"""Synthetic evaluation items with realistic and with skewed costs.

* `realistic`: VQA-like. One image per item, each resized to one tile (InternVL without `--dynamic`),
  prompts of 20-60 words: every item costs about the same (256 image tokens + 30-70 text tokens
  on a 448-pixel model), as TextVQA / GQA style runs do.
* `skewed`: `--dynamic --max-num 12`. Most items as above; a few (`heavy_fraction`, 6% by default) carry a
  3:1 image that tiles into 6x2 + a thumbnail = 13 tiles and a 300-500 word prompt, about 13 times the
  cost of a light item. The heavy items sit in the first third of the dataset (datasets are often
  ordered by source: document pages together), which is what hurts contiguous static shards.

Images are JPEG bytes in memory (`ImageBytes`), so the DataLoader workers decode them as they would
files; a small pool of distinct images per size is shared by the items.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
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
        return {"name": self.name, "items": len(self.items), "dynamic": self.dynamic, "max_num": self.max_num,
                "heavy_items": len(self.heavy_ids),
                "heavy_positions": sorted(i for i, item in enumerate(self.items) if item.id in self.heavy_ids)[:3]}


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
        pool.append(ImageBytes(buffer.getvalue(), f"synthetic-{width}x{height}-{index}.jpg"))
    return pool


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


def make_set(name: str, num_items: int, tile_size: int = 448, seed: int = 0) -> SyntheticSet:
    if name == "realistic":
        return realistic(num_items, tile_size, seed)
    if name == "skewed":
        return skewed(num_items, tile_size, seed)
    raise ValueError(f"unknown set {name!r}: realistic or skewed")
