"""Prefix sharing: questions about one image share its vision and prefill work, and predict the same tokens.

In-process tests (float32, CPU) compare the shared layout with the plain collate (the processor's own
output) and the tokens with transformers' `generate` on that output; end-to-end tests run `launch.py`
(1 process, torchrun with 2 ranks, both schedules, with and without `--dynamic`) with sharing and compare
every prediction with a run without it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from eval_scripts.base import Item
from launcher import prefix_sharing
from launcher.adapters import ModelInputs, NativeImageTextAdapter
from launcher.generation import GenerationSettings
from launcher.loading import load_adapter
from launcher.scheduler import cost_batches, plan_batches, shard_indices
from tests.inputs import make_args
from tests.runs import explain, launch, manifest, predictions, torchrun

pytestmark = pytest.mark.timeout(300)

GREEDY = GenerationSettings(max_new_tokens=6)


def picture(width: int, height: int, colour: tuple[int, int, int], seed: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 5 + seed, height // 4, 3 * width // 4, 3 * height // 4 - seed), fill=colour)
    draw.rectangle((2, 2, 10 + 3 * seed, 12), fill=(seed * 40 % 255, 90, 200))
    return image


IMAGES = {"red": picture(56, 56, (220, 20, 20), 1), "wide": picture(200, 70, (20, 20, 220), 2),
          "tall": picture(60, 150, (20, 180, 20), 3), "small": picture(40, 40, (230, 200, 0), 4)}
QUESTIONS = ["what colour is the circle ?", "how many shapes are there in the picture ? answer using a single word .",
             "is it big ?", "what colour is the square on the left ?", "red", "which shape is on the left ?"]
# Groups of 1 to 4 items; two of them start with the same words (a prefix longer than the image).
LAYOUT = [("red", 0), ("wide", 1), ("red", 3), ("tall", 2), ("wide", 0), ("red", 4), ("small", 5),
          ("wide", 3), ("red", 0), ("tall", 1)]


def batch_items(layout=LAYOUT, prefix: str = "") -> tuple[list[Item], list[str], list[list[Image.Image]]]:
    items = [Item(id=f"{prefix}{i}", question=QUESTIONS[q] + (" again" if i == 8 else ""), images=(name,))
             for i, (name, q) in enumerate(layout)]
    return items, [item.question for item in items], [[IMAGES[item.images[0]]] for item in items]


@pytest.fixture(scope="module", params=[False, True], ids=["one-tile", "dynamic"])
def adapter(request, native_checkpoint) -> NativeImageTextAdapter:
    built = load_adapter(make_args(native_checkpoint, dynamic=request.param, max_num=4))
    assert isinstance(built, NativeImageTextAdapter)
    return built


def collate(adapter: NativeImageTextAdapter, shared: bool, *args) -> ModelInputs:
    adapter.prefix_sharing = shared
    try:
        return adapter.collate(*args)
    finally:
        adapter.prefix_sharing = False


def new_tokens(adapter: NativeImageTextAdapter, batch: ModelInputs, settings: GenerationSettings) -> torch.Tensor:
    with torch.inference_mode():
        return adapter._new_tokens(batch.to(torch.device("cpu"), adapter.dtype), settings)


# ----------------------------------------------------------------------------------------------
# Collate: the shared layout carries exactly the plain batch


def test_a_shared_batch_holds_each_image_once_and_unshares_to_the_plain_collate(adapter):
    args = batch_items()
    plain = collate(adapter, False, *args)
    shared = collate(adapter, True, *args)
    assert prefix_sharing.is_shared(shared.tensors) and not prefix_sharing.is_shared(plain.tensors)
    assert shared.tensors[prefix_sharing.PREFIX_IDS].shape[0] == 4          # red, wide, tall, small
    rows = shared.tensors[prefix_sharing.PREFIX_PIXEL_ROWS].tolist()
    assert sum(rows) == shared.tensors["pixel_values"].shape[0] < plain.tensors["pixel_values"].shape[0]
    if adapter.dynamic:
        tiles_per_image = dict(zip(["red", "wide", "tall", "small"], rows))
        assert tiles_per_image["wide"] > 1 and tiles_per_image["tall"] > 1
    unshared = prefix_sharing.unshared_tensors(shared.tensors, adapter.tokenizer.pad_token_id)
    assert set(unshared) == set(plain.tensors)
    for name, tensor in plain.tensors.items():
        assert torch.equal(unshared[name], tensor), name


def test_the_shared_prefix_runs_past_the_image_where_a_groups_questions_agree(adapter):
    layout = [("red", 3), ("red", 0), ("red", 2)]   # "what colour is the ..." twice, then "is it big ?"
    items, prompts, images = batch_items(layout)
    shared = collate(adapter, True, items[:2], prompts[:2], images[:2]).tensors
    image_prefix = collate(adapter, True, items[1:], prompts[1:], images[1:]).tensors
    longer = int(shared[prefix_sharing.PREFIX_MASK].sum())
    assert longer > int(image_prefix[prefix_sharing.PREFIX_MASK].sum())
    assert int(shared[prefix_sharing.SUFFIX_MASK].sum(1).min()) >= 1


def test_a_chunk_without_a_shared_image_is_collated_plainly(adapter):
    items, prompts, images = batch_items([("red", 0), ("wide", 1), ("tall", 2)])
    assert not prefix_sharing.is_shared(collate(adapter, True, items, prompts, images).tensors)


def test_joined_shared_chunks_equal_one_shared_collate_and_mixed_chunks_join_as_plain(adapter):
    from launcher.runner import PreparedBatch, join_parts

    items, prompts, images = batch_items()
    whole = collate(adapter, True, items, prompts, images)
    parts = [collate(adapter, True, items[a:b], prompts[a:b], images[a:b]) for a, b in ((0, 5), (5, 10))]
    joined = ModelInputs.join(parts)
    assert prefix_sharing.is_shared(parts[1].tensors)
    for tensors in (whole.tensors, joined.tensors):
        unshared = prefix_sharing.unshared_tensors(tensors, adapter.tokenizer.pad_token_id)
        plain = collate(adapter, False, items, prompts, images)
        assert all(torch.equal(unshared[name], plain.tensors[name]) for name in plain.tensors)

    mixed = [PreparedBatch(0, list(range(0, 6)), collate(adapter, True, items[:6], prompts[:6], images[:6])),
             PreparedBatch(0, [6, 7, 8], collate(adapter, True, items[6:9], prompts[6:9], images[6:9]))]
    assert not prefix_sharing.is_shared(mixed[1].inputs.tensors)
    result = join_parts(mixed, False, adapter.tokenizer.pad_token_id).inputs
    plain = collate(adapter, False, items[:9], prompts[:9], images[:9])
    assert set(result.tensors) == set(plain.tensors)
    assert all(torch.equal(result.tensors[name], plain.tensors[name]) for name in plain.tensors)


def test_every_chunk_of_a_batch_with_a_repeated_image_is_shared_even_one_without_a_repeat(adapter):
    from launcher.runner import Preprocessor, _ChunkKeys, join_parts

    items, prompts, images = batch_items([("red", 0), ("red", 1), ("wide", 2), ("tall", 3)])
    groups = prefix_sharing.group_keys(items, range(4))
    chunks = list(_ChunkKeys([[0, 1, 2, 3]], 2, None, groups))
    assert [chunk.indices for chunk in chunks] == [(0, 1, 2), (3,)] and all(chunk.shared for chunk in chunks)

    class Opened(Preprocessor):          # the pictures by name instead of files
        @staticmethod
        def _open(source, item_id, decoded):
            return IMAGES[source]

    adapter.prefix_sharing = True
    try:
        prepare = Opened(items, prompts, adapter, "error")
        parts = [prepare(chunk.number, list(chunk.indices), chunk.shared) for chunk in chunks]
        alone = prepare(0, [3])
    finally:
        adapter.prefix_sharing = False
    assert all(prefix_sharing.is_shared(part.inputs.tensors) for part in parts)
    assert not prefix_sharing.is_shared(alone.inputs.tensors)          # outside a sharing batch: plain
    joined = join_parts(parts, False, adapter.tokenizer.pad_token_id).inputs
    assert prefix_sharing.is_shared(joined.tensors)
    plain = collate(adapter, False, items, prompts, images)
    unshared = prefix_sharing.unshared_tensors(joined.tensors, adapter.tokenizer.pad_token_id)
    assert all(torch.equal(unshared[name], plain.tensors[name]) for name in plain.tensors)


# ----------------------------------------------------------------------------------------------
# Generation: the same tokens as transformers' generate on the plain batch


def generate_reference(adapter: NativeImageTextAdapter, items, prompts, images) -> torch.Tensor:
    """transformers' `generate` on the processor's own (unshared) batch: the tokens sharing must give."""
    plain = collate(adapter, False, items, prompts, images)
    with torch.inference_mode():
        inputs = plain.to(torch.device("cpu"), adapter.dtype)
        output = adapter.model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                        num_beams=1, pad_token_id=adapter.tokenizer.pad_token_id)
    return output[:, inputs["input_ids"].shape[1]:]


def test_shared_prefill_gives_generates_tokens_for_every_item(adapter):
    items, prompts, images = batch_items()
    reference = generate_reference(adapter, items, prompts, images)
    ours = new_tokens(adapter, collate(adapter, True, items, prompts, images), GREEDY)
    assert torch.equal(ours, reference), (ours.tolist(), reference.tolist())
    assert len({tuple(row) for row in reference.tolist()}) > 3        # the rows differ: a real comparison


def vision_batches(adapter: NativeImageTextAdapter, batch: ModelInputs, settings: GenerationSettings
                   ) -> tuple[torch.Tensor, list[int]]:
    """The new tokens, and the number of tiles the vision tower saw at each call."""
    seen = []
    hook = adapter.model.model.vision_tower.register_forward_hook(
        lambda module, args, output: seen.append(int(output[0].shape[0])))
    try:
        return new_tokens(adapter, batch, settings), seen
    finally:
        hook.remove()


@pytest.mark.parametrize("decode", ["auto", "generate"])
def test_the_vision_tower_sees_each_distinct_image_once(adapter, decode):
    items, prompts, images = batch_items()
    shared = collate(adapter, True, items, prompts, images)
    _, seen = vision_batches(adapter, shared, GenerationSettings(max_new_tokens=6, decode=decode))
    assert seen == [int(shared.tensors[prefix_sharing.PREFIX_PIXEL_ROWS].sum())]
    assert seen[0] < int(collate(adapter, False, items, prompts, images).tensors["pixel_values"].shape[0])


def test_generate_continues_from_the_shared_prefixes_with_generates_own_tokens(adapter):
    """The decode path of split models (and of --decode generate): each group's prefix prefilled once into a
    DynamicCache, its rows copied to the members, transformers' generate runs the suffixes and decodes."""
    items, prompts, images = batch_items()
    reference = generate_reference(adapter, items, prompts, images)
    shared = collate(adapter, True, items, prompts, images)
    by_generate = new_tokens(adapter, shared, GenerationSettings(max_new_tokens=6, decode="generate"))
    assert torch.equal(by_generate, reference), (by_generate.tolist(), reference.tolist())


def test_sharing_with_4bit_weights_gives_generates_tokens(native_checkpoint):
    """bitsandbytes weights decode through `generate` (no CUDA graphs), so sharing goes the DynamicCache way.
    4-bit weights are dequantized per layer and every row is computed alone: the tokens must be generate's on
    the unshared batch. (8-bit is not held to this: LLM.int8 picks its outlier columns over all the rows of a
    matmul, so its tokens change with the batch's other items with or without sharing; DECISIONS.)"""
    quantized = load_adapter(make_args(native_checkpoint, load_in_4bit=True))
    assert quantized.quantization == "4bit" and quantized.fast_decode_unsupported()
    assert prefix_sharing.unsupported_reason(quantized, GREEDY) is None
    items, prompts, images = batch_items()
    reference = generate_reference(quantized, items, prompts, images)
    shared = collate(quantized, True, items, prompts, images)
    ours, seen = vision_batches(quantized, shared, GREEDY)
    assert torch.equal(ours, reference), (ours.tolist(), reference.tolist())
    assert len({tuple(row) for row in reference.tolist()}) > 3
    assert seen == [int(shared.tensors[prefix_sharing.PREFIX_PIXEL_ROWS].sum())]   # each image once


# ----------------------------------------------------------------------------------------------
# Where it applies


def test_sharing_applies_to_greedy_fast_decoding_of_native_internvl_and_names_why_not_elsewhere(
        native_checkpoint, remote_checkpoint):
    native = load_adapter(make_args(native_checkpoint))
    assert prefix_sharing.unsupported_reason(native, GenerationSettings()) is None
    assert prefix_sharing.unsupported_reason(native, GenerationSettings(decode="generate")) is None
    assert "sampling" in prefix_sharing.unsupported_reason(native, GenerationSettings(temperature=0.7))
    assert "beams" in prefix_sharing.unsupported_reason(native, GenerationSettings(num_beams=2))
    assert "--static-cache" in prefix_sharing.unsupported_reason(native, GenerationSettings(static_cache=True))
    remote = load_adapter(make_args(remote_checkpoint, trust_remote_code=True))
    assert "internvl_chat" in prefix_sharing.unsupported_reason(remote, GenerationSettings())


# ----------------------------------------------------------------------------------------------
# Schedule: groups stay together (pure)


def keys(layout: str) -> dict[int, str]:
    """'aaabbc' -> {0: 'a', 1: 'a', 2: 'a', 3: 'b', ...}"""
    return dict(enumerate(layout))


@pytest.mark.parametrize("layout, batch_size, expected", [
    ("aaabbbcc", 4, [[0, 1, 2], [3, 4, 5], [6, 7]]),           # a group that does not fit starts the next batch
    ("abcabcab", 3, [[0, 3, 6], [1, 4, 7], [2, 5]]),           # members gathered from anywhere in the set
    ("aaaaaaab", 3, [[0, 1, 2], [3, 4, 5], [6, 7]]),           # a group larger than a batch spans batches
    ("abcdefgh", 3, [[0, 1, 2], [3, 4, 5], [6, 7]]),           # no shared images: as without groups
])
def test_cost_batches_keep_groups_together(layout, batch_size, expected):
    costs = {index: 10.0 for index in range(len(layout))}
    assert cost_batches(list(range(len(layout))), costs, batch_size, groups=keys(layout)) == expected


def test_without_groups_cost_batches_are_unchanged():
    costs = {index: float(10 - index % 4) for index in range(11)}
    indices = list(range(11))
    assert cost_batches(indices, costs, 4) == cost_batches(indices, costs, 4, groups=keys("abcdefghijk"))


@pytest.mark.parametrize("dynamic, world_size", [(False, 1), (False, 3), (True, 3)])
def test_every_item_is_planned_once_and_each_group_in_consecutive_batches(dynamic, world_size):
    layout = "aaaabbcccccdeeffffffgh"
    groups = keys(layout)
    costs = {index: 5.0 + (index % 3) for index in groups}
    planned = [plan_batches(list(groups), costs, 4, rank, world_size, dynamic, groups=groups)
               for rank in range(1 if dynamic else world_size)]
    flat = [index for batches in planned for batch in batches for index in batch]
    assert sorted(flat) == list(groups)
    for batches in planned:
        order = [groups[index] for batch in batches for index in batch]
        for key in set(order):
            positions = [position for position, other in enumerate(order) if other == key]
            assert positions == list(range(positions[0], positions[0] + len(positions))), (key, batches)


def test_static_shards_end_at_group_boundaries():
    groups = keys("aaabbbbccd")
    shards = [shard_indices(list(groups), rank, 3, groups) for rank in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert shard_indices(list(range(10)), 1, 3) == [4, 5, 6]     # without groups: contiguous_shard


def test_effective_costs_pay_a_groups_image_once_per_batch():
    groups = keys("aaab")
    costs = {0: 300.0, 1: 310.0, 2: 305.0, 3: 290.0}
    shared = {index: 258.0 for index in costs}
    effective = prefix_sharing.effective_costs(costs, shared, groups, batch_size=16)
    assert effective[0] == pytest.approx(300 - 258 + 86) and effective[3] == 290.0
    assert sum(effective[i] for i in range(3)) == pytest.approx(258 + (300 + 310 + 305 - 3 * 258))
    halved = prefix_sharing.effective_costs(costs, shared, groups, batch_size=2)
    assert halved[0] == pytest.approx(300 - 258 + 129)


@pytest.mark.parametrize("layout, parts, expected", [
    ("aaabbbcc", 2, [(0, 6), (6, 8)]),
    ("abcdefgh", 3, [(0, 3), (3, 6), (6, 8)]),
    ("aaaaaaaa", 4, [(0, 8)]),
])
def test_chunks_of_a_batch_end_at_group_boundaries(layout, parts, expected):
    batch = list(range(len(layout)))
    assert prefix_sharing.chunk_ranges(batch, parts, keys(layout)) == expected
    assert prefix_sharing.chunk_ranges(batch, parts, None) == [
        (start, min(start + -(-len(batch) // parts), len(batch))) for start in range(0, len(batch), -(-len(batch) // parts))]


# ----------------------------------------------------------------------------------------------
# End to end: launch.py with sharing predicts what it predicts without


TASK = "synthetic_shapes"


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> tuple[Path, Path]:
    """Five images (two wide: several tiles with --dynamic) with 1 to 6 questions each, interleaved."""
    from eval_scripts.synthetic import make_item

    root = tmp_path_factory.mktemp("shared_data")
    (root / "images").mkdir()
    per_image = [5, 1, 3, 6, 2]
    rows = []
    question_index = 0
    for image_index, count in enumerate(per_image):
        image = make_item(1234, "test", image_index).image
        if image_index in (1, 3):
            image = image.resize((190, 64))
        image.save(root / "images" / f"{image_index}.png")
        for _ in range(count):
            item = make_item(1234, "test", 100 + question_index)
            rows.append({"question_id": question_index, "image": f"images/{image_index}.png",
                         "question": item.question, "answer": item.answer, "question_type": item.question_type})
            question_index += 1
    total = len(rows)
    rows.sort(key=lambda row: (row["question_id"] * 7) % total)    # a group's questions are not adjacent
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root, data


def run_args(checkpoint, data, out_dir, *extra) -> list:
    root, data_file = data
    return ["--checkpoint", checkpoint, "--task", TASK, "--data-root", root, "--data", data_file,
            "--out-dir", out_dir, "--max-new-tokens", "4", *extra]


@pytest.fixture(scope="module", params=[False, True], ids=["one-tile", "dynamic"])
def unshared_run(request, native_checkpoint, shared_data, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("unshared")
    tiling = ["--dynamic", "--max-num", "4"] if request.param else []
    result = launch(run_args(native_checkpoint, shared_data, out_dir, "--no-prefix-sharing", "--batch-size", "2",
                             "--num-workers", "0", *tiling))
    assert result.returncode == 0, explain(result)
    run = manifest(out_dir)
    assert run["prefix_sharing"] == {"enabled": False, "reason": "turned off by --no-prefix-sharing"}
    return out_dir, tiling


@pytest.mark.parametrize("processes, schedule, batch_size, workers, decode", [
    (1, "dynamic", "auto", "2", "auto"),
    (2, "static", "4", "0", "auto"),
    (2, "dynamic", "4", "2", "auto"),
    (1, "static", "4", "2", "generate"),     # the decode path of split models: generate from the shared prefixes
])
def test_sharing_predicts_exactly_what_the_unshared_run_predicts(processes, schedule, batch_size, workers, decode,
                                                                 native_checkpoint, shared_data, unshared_run,
                                                                 tmp_path):
    reference_dir, tiling = unshared_run
    args = run_args(native_checkpoint, shared_data, tmp_path, "--batch-size", batch_size, "--num-workers", workers,
                    "--schedule", schedule, "--decode", decode, *tiling)
    result = launch(args) if processes == 1 else torchrun(processes, args)
    assert result.returncode == 0, explain(result)
    assert predictions(tmp_path, TASK) == predictions(reference_dir, TASK)
    run = manifest(tmp_path)
    assert run["prefix_sharing"] == {"enabled": True, "reason": None}
    entry = run["tasks"][TASK]
    assert entry["prefix_groups"] == {"items": 17, "groups": 5, "largest": 6, "mean_items_per_group": 3.4}
    counts = [rank["prefix_sharing"] for rank in entry["per_rank"]]
    assert sum(count["items"] for count in counts) > 0                      # the shared path ran
    assert all(count["prefixes"] < count["items"] for count in counts if count["items"])
    expected_batch = {"batch_size": 16, "source": "cpu"} if batch_size == "auto" else {"batch_size": 4,
                                                                                        "source": "flag"}
    assert {key: entry["batch_size"][key] for key in ("batch_size", "source")} == expected_batch


def test_groups_larger_than_a_batch_fill_whole_batches_under_the_cost_cap():
    groups = {index: index // 18 for index in range(72)}                 # POPE: 18 questions per image
    costs = prefix_sharing.effective_costs({index: 300.0 for index in groups}, {index: 258.0 for index in groups},
                                           groups, batch_size=16)
    batches = plan_batches(list(groups), costs, 16, 0, 1, False, groups=groups)
    assert [len(batch) for batch in batches] == [16, 16, 16, 16, 8]
