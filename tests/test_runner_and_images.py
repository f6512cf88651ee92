"""The batch loop's out-of-memory split and the image guards (pure pieces, no processes)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from eval_scripts.base import DataError, ImageBytes, Item
from launcher.errors import UserError
from launcher.generation import GenerationSettings
from launcher.images import open_image
from launcher.runner import PreparedBatch, _generate_splitting_on_oom


class _MemoryBoundAdapter:
    """Answers each item with its own question, and runs out of CUDA memory above `limit` items a batch."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[int] = []

    def collate(self, items, prompts, images):
        return list(prompts)

    def generate(self, batch, settings):
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return [f"answer to {prompt}" for prompt in batch]


class _Prepare:
    def __init__(self, items, adapter):
        self.items, self.adapter = items, adapter

    def __call__(self, number, indices):
        return PreparedBatch(number, list(indices),
                             self.adapter.collate(None, [self.items[i].question for i in indices], None))


def test_an_out_of_memory_batch_is_split_until_it_fits_and_keeps_item_order():
    items = [Item(id=str(index), question=f"q{index}") for index in range(8)]
    adapter = _MemoryBoundAdapter(limit=2)
    prepare = _Prepare(items, adapter)
    texts, splits = _generate_splitting_on_oom(adapter, prepare, prepare(0, range(8)), GenerationSettings())
    assert texts == [f"answer to q{index}" for index in range(8)]
    assert adapter.calls == [8, 4, 2, 2, 4, 2, 2]
    assert splits == 3


def test_a_single_item_that_does_not_fit_is_a_user_error_naming_the_item_and_the_flags():
    items = [Item(id=str(index), question=f"q{index}") for index in range(3)]
    adapter = _MemoryBoundAdapter(limit=0)
    prepare = _Prepare(items, adapter)
    with pytest.raises(UserError, match=r"out of memory generating item '0' alone \(batch size 1\).*"
                                        r"--gpus-per-model.*--load-in-8bit"):
        _generate_splitting_on_oom(adapter, prepare, prepare(0, [0, 1, 2]), GenerationSettings())
    assert adapter.calls == [3, 1]   # split down to the first item alone, which still does not fit


def test_a_decompression_bomb_is_refused_naming_item_and_size(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)          # 100 M pixels, a few kB on disk
    with pytest.raises(DataError, match=r"item 'x7'.*10000x10000 pixels"):
        open_image(path, "x7")


def test_a_missing_and_a_corrupt_image_name_the_item(tmp_path):
    with pytest.raises(DataError, match=r"item 'a': image not found"):
        open_image(tmp_path / "nope.png", "a")
    with pytest.raises(DataError, match=r"item 'b': cannot read image"):
        open_image(ImageBytes(b"GIF89a broken", "row 3 of mmbench.tsv"), "b")


def test_a_good_image_comes_back_as_rgb(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("L", (5, 3), 128).save(path)
    image = open_image(path, "c")
    assert image.mode == "RGB" and image.size == (5, 3)
