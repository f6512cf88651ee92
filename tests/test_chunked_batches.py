"""Batches prepared in chunks by several DataLoader workers and joined: the same inputs, the same answers.

The runner cuts each batch into one chunk per worker (so a batch is ready after B / workers items of CPU
work) and joins the chunks with `ModelInputs.join`. These tests hold the join to one collate of the whole
batch, for each adapter, and check what the runner does with real worker processes and a real store.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from eval_scripts.base import Item
from launcher.adapters import ModelInputs
from launcher.generation import GenerationSettings
from launcher.journal import Journal, read_journal
from launcher.loading import load_adapter
from launcher.runner import (Chunk, PreparedBatch, StopFlag, _ChunkKeys, chunk_size, collate_whole, join_parts,
                             run_batches)
from tests.inputs import make_args, noise_image
from tests.runs import free_port

pytestmark = pytest.mark.timeout(240)


# Prompts of very different lengths and images of different tile counts, so chunks pad differently.
PROMPTS = ["what is it ?", "describe the picture in many words , please , with every colour and shape you see .",
           "count .", "where is the square and where is the circle ?", "is it red ?"]
IMAGES = [[noise_image(200, 90, 1)], [noise_image(60, 140, 2)], [noise_image(40, 40, 3)],
          [noise_image(300, 100, 4)], [noise_image(90, 90, 5)]]


def collate(adapter, positions) -> ModelInputs:
    items = [Item(id=str(i), question=PROMPTS[i]) for i in positions]
    return adapter.collate(items, [PROMPTS[i] for i in positions], [IMAGES[i] for i in positions])


def assert_same_inputs(joined: ModelInputs, whole: ModelInputs) -> None:
    assert joined.size == whole.size
    assert joined.tensors.keys() == whole.tensors.keys()
    for name, tensor in whole.tensors.items():
        assert joined.tensors[name].dtype == tensor.dtype, name
        assert torch.equal(joined.tensors[name], tensor), name
    assert joined.extra == whole.extra
    assert joined.pixel_normalization == whole.pixel_normalization
    assert joined.pad_values == whole.pad_values


@pytest.fixture(scope="module")
def native_adapter(native_checkpoint):
    return load_adapter(make_args(native_checkpoint, dynamic=True, max_num=4))


@pytest.fixture(scope="module")
def remote_adapter(remote_checkpoint):
    return load_adapter(make_args(remote_checkpoint, trust_remote_code=True, dynamic=True, max_num=4))


@pytest.mark.parametrize("split", [[1, 4], [2, 2, 1], [1, 1, 1, 1, 1]])
@pytest.mark.parametrize("family", ["native", "remote"])
def test_joined_chunks_equal_one_collate_of_the_whole_batch(family, split, native_adapter, remote_adapter):
    adapter = native_adapter if family == "native" else remote_adapter
    whole = collate(adapter, range(5))
    assert set(whole.pad_values) >= {"input_ids", "attention_mask"}
    parts, start = [], 0
    for size in split:
        parts.append(collate(adapter, range(start, start + size)))
        start += size
    assert len({part.tensors["input_ids"].shape[1] for part in parts}) > 1     # the parts really pad differently
    assert_same_inputs(ModelInputs.join(parts), whole)


def test_a_text_only_model_joins_its_chunks_too(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from launcher.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    adapter = load_adapter(make_args(tmp_path))
    items = [Item(id=str(i), question=prompt) for i, prompt in enumerate(PROMPTS)]
    whole = adapter.collate(items, PROMPTS, [[] for _ in PROMPTS])
    parts = [adapter.collate(items[:2], PROMPTS[:2], [[], []]), adapter.collate(items[2:], PROMPTS[2:], [[]] * 3)]
    assert_same_inputs(ModelInputs.join(parts), whole)


def test_chunks_with_and_without_images_are_collated_again_as_one(native_adapter):
    items = [Item(id="0", question=PROMPTS[0]), Item(id="1", question=PROMPTS[1])]
    whole = native_adapter.collate(items, PROMPTS[:2], [IMAGES[0], []])
    first = PreparedBatch(0, [0], native_adapter.collate(items[:1], PROMPTS[:1], [IMAGES[0]]))
    second = PreparedBatch(0, [1], native_adapter.collate(items[1:], PROMPTS[1:2], [[]]))
    with pytest.raises(ValueError):
        ModelInputs.join([first.inputs, second.inputs])
    asked = []

    def prepare_whole(number, indices):
        asked.append(indices)
        return PreparedBatch(number, indices, native_adapter.collate(items, PROMPTS[:2], [IMAGES[0], []]))

    assert join_parts([first, second], False, native_adapter.tokenizer.pad_token_id) is None
    joined = collate_whole([first, second], pin_memory=False, prepare=prepare_whole)
    assert asked == [[0, 1]] and joined.indices == [0, 1]
    assert_same_inputs(joined.inputs, whole)


def test_chunk_size_spreads_a_batch_over_the_workers():
    assert chunk_size(256, 8) == 32
    assert chunk_size(8, 3) == 3
    assert chunk_size(5, 8) == 1
    assert chunk_size(64, 1) == 64


def test_chunk_keys_cut_every_batch_over_the_workers_in_order_and_mark_the_last_part():
    batches = [[5, 6, 7, 8, 9], [1, 2], [3], [10, 11, 12, 13, 14, 15, 16]]
    keys = list(_ChunkKeys(batches, 2, None))
    assert [(k.number, k.part, k.parts, k.indices) for k in keys] == [
        (0, 0, 2, (5, 6, 7)), (0, 1, 2, (8, 9)), (1, 0, 2, (1,)), (1, 1, 2, (2,)), (2, 0, 1, (3,)),
        (3, 0, 2, (10, 11, 12, 13)), (3, 1, 2, (14, 15, 16))]
    assert isinstance(keys[0], Chunk)
    # A small batch of heavy items is spread as a full one is: 3 workers, 3 chunks of one item.
    assert [k.indices for k in _ChunkKeys([[7, 8, 9], list(range(12))], 3, None)][:3] == [(7,), (8,), (9,)]


# ------------------------------------------------------------------------------------------------
# The runner with real DataLoader worker processes and a real store


class _Task:
    name = "chunks"

    def prediction_row(self, item, prediction):
        return {"id": item.id, "prediction": prediction}


class _Watching:
    """The adapter, recording for each generate call its batch size and how many batches were claimed."""

    def __init__(self, adapter, store, key):
        self.adapter, self.store, self.key = adapter, store, key
        self.claimed_at_generate: list[int] = []
        self.sizes: list[int] = []

    def collate(self, *args):
        return self.adapter.collate(*args)

    def generate(self, batch, settings):
        self.sizes.append(batch.size)
        if self.store is not None:
            self.claimed_at_generate.append(int(self.store.add(self.key, 0)))
        return self.adapter.generate(batch, settings)


def _run(adapter, items, prompts, batches, workers, store=None, key=None):
    with tempfile.TemporaryDirectory() as scratch:
        journal = Journal(Path(scratch) / "journal.jsonl")
        result = run_batches(task=_Task(), items=items, prompts=prompts, batches=batches, adapter=adapter,
                             settings=GenerationSettings(max_new_tokens=3), journal=journal, on_bad_item="error",
                             num_workers=workers, pin_memory=False, queue_key=key, store=store, stop=StopFlag(),
                             on_batch_done=lambda *_: None, set_phase=lambda *_: None)
        journal.close()
        return result, {row["id"]: row["prediction"] for row in read_journal(journal.path)}


def _items(tmp_path, count):
    folder = tmp_path / "images"
    folder.mkdir()
    items = []
    for index in range(count):
        path = folder / f"{index}.png"
        IMAGES[index % len(IMAGES)][0].save(path)
        items.append(Item(id=f"i{index}", question=PROMPTS[index % len(PROMPTS)], images=(str(path),)))
    return items, [item.question for item in items]


def test_workers_preparing_chunks_give_the_predictions_of_one_process(native_adapter, tmp_path):
    items, prompts = _items(tmp_path, 14)
    batches = [list(range(0, 6)), list(range(6, 12)), [12, 13]]
    alone_result, alone = _run(native_adapter, items, prompts, batches, workers=0)
    chunked_result, chunked = _run(native_adapter, items, prompts, batches, workers=3)
    assert chunked == alone and len(chunked) == 14
    assert chunked_result.batches == alone_result.batches == 3


def test_the_first_large_batch_generates_in_a_lead_quarter_then_the_rest_with_the_same_predictions(
        native_adapter, tmp_path):
    items, prompts = _items(tmp_path, 80)
    batches = [list(range(0, 64)), list(range(64, 80))]
    watching = _Watching(native_adapter, None, None)
    chunked_result, chunked = _run(watching, items, prompts, batches, workers=2)
    alone_result, alone = _run(native_adapter, items, prompts, batches, workers=0)
    assert chunked == alone and len(chunked) == 80
    assert watching.sizes == [16, 48, 16]          # the first batch as a quarter, then the rest; later ones whole
    assert (chunked_result.batches, alone_result.batches) == (3, 2)


@pytest.mark.parametrize("size, groups, expected", [
    (256, None, [64, 192]),
    (63, None, [63]),                                          # under 64 images: whole
    (256, {i: i // 3 for i in range(256)}, [66, 190]),       # 86 images: the next boundary after the quarter
    (256, {i: i // 18 for i in range(256)}, [256]),          # POPE: 15 images, quick to prepare: whole
    (256, {i: min(i, 64) for i in range(256)}, [64, 192]),   # 65 images, the last asked 192 times: at the quarter
])
def test_the_lead_piece_is_a_quarter_cut_at_an_image_boundary_where_one_is_near(size, groups, expected):
    from launcher.runner import lead_split

    pieces = lead_split(list(range(size)), groups)
    assert [len(piece) for piece in pieces] == expected
    assert [index for piece in pieces for index in piece] == list(range(size))


@pytest.mark.parametrize("size, per_image, tiles, expected", [
    (176, 4, 13, [44, 132]),     # DocVQA-like: 44 pages of 13 tiles (under 64 images), 4 questions each: split
    (256, 18, 1, [256]),         # POPE-like: 15 one-tile images: whole
    (256, 1, 1, [64, 192]),      # 256 distinct one-tile images: split, as without image tokens
    (60, 1, 1, [60]),            # 60 one-tile images: whole
    (256, 1, 0, [256]),          # no images (text only): tokenizing is quick, whole
])
def test_the_lead_piece_counts_the_distinct_images_tokens_not_the_images(size, per_image, tiles, expected):
    from launcher.runner import lead_split

    groups = {index: index // per_image for index in range(size)} if per_image > 1 else None
    image_tokens = {index: 256.0 * tiles for index in range(size)}
    pieces = lead_split(list(range(size)), groups, image_tokens)
    assert [len(piece) for piece in pieces] == expected
    # The sampler cuts the first batch it hands out so, and only that one.
    keys = list(_ChunkKeys([list(range(size)), list(range(size))], 2, None, groups, lead=True,
                           image_tokens=image_tokens))

    def piece_sizes(number):                  # each piece is cut into chunks numbered from 0
        sizes = []
        for key in (key for key in keys if key.number == number):
            if key.part == 0:
                sizes.append(0)
            sizes[-1] += len(key.indices)
        return sizes

    assert piece_sizes(0) == expected and piece_sizes(1) == [size]       # later batches stay whole


def test_a_process_claims_about_one_batch_ahead_of_the_one_it_generates(native_adapter, tmp_path):
    import torch.distributed as dist

    items, prompts = _items(tmp_path, 24)
    batches = [list(range(4 * b, 4 * b + 4)) for b in range(6)]
    store = dist.TCPStore("127.0.0.1", free_port(), world_size=1, is_master=True, wait_for_workers=False)
    watching = _Watching(native_adapter, store, "queue")
    result, predictions = _run(watching, items, prompts, batches, workers=4, store=store, key="queue")
    assert len(predictions) == 24 and result.batches == 6
    # 4 workers, one chunk (item) each: the 4 chunks in flight are one batch, and one batch waits joined
    # (runner.JoinedBatches), so when batch k (0-based) starts generating at most batch k + 2 has been claimed
    # (with one batch per worker it would be k + 5). The counter also counts the last, failed claim.
    assert watching.claimed_at_generate[0] <= 3, watching.claimed_at_generate
    for done, claimed in enumerate(watching.claimed_at_generate):
        assert claimed <= done + 3 + (1 if done >= len(batches) - 2 else 0), watching.claimed_at_generate


def test_auto_workers_share_the_cpus_among_the_node_processes_leaving_one_each():
    from launcher.runner import MAX_AUTO_WORKERS, default_num_workers

    assert default_num_workers(1, cpus=16) == MAX_AUTO_WORKERS == 8      # one GPU, 16 cores
    assert default_num_workers(8, cpus=128) == 8                          # 8 ranks, 128 cores: 15 each, capped
    assert default_num_workers(4, cpus=24) == 5
    assert default_num_workers(2, cpus=2) == 1                            # CI: never zero
    assert default_num_workers(1, cpus=1) == 1


def test_num_workers_takes_a_number_or_auto_and_refuses_the_rest():
    from launcher.cli import parse_args
    from launcher.errors import UserError

    common = ["--checkpoint", "x", "--task", "vqa"]
    assert parse_args(common).num_workers is None
    assert parse_args(common + ["--num-workers", "auto"]).num_workers is None
    assert parse_args(common + ["--num-workers", "3"]).num_workers == 3
    with pytest.raises(UserError, match="expected a number or 'auto', got 'many'"):
        parse_args(common + ["--num-workers", "many"])
    with pytest.raises(UserError, match="--num-workers must be 0 or more"):
        parse_args(common + ["--num-workers", "-1"])
