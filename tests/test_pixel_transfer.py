"""Pixels travel as uint8 and are normalised on the model's device: same model inputs, same predictions.

Collate ships bytes; `ModelInputs.to` applies the rescale + mean/std normalisation after the copy
(`launcher.pixel_normalization`). These tests hold the deferred path to the processor's own float path
and fall back to that path when a processor cannot defer.
"""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch

from eval_scripts.base import Item
from launcher.adapters import InternVLChatAdapter, ModelInputs, NativeImageTextAdapter, load_processor
from launcher.generation import GenerationSettings
from launcher.loading import load_adapter
from launcher.pixel_normalization import PixelNormalization
from launcher.tiling import IMAGENET_NORMALIZATION, native_processor_kwargs, pixel_values, tile_image
from tests.inputs import make_args, noise_image

pytestmark = pytest.mark.timeout(240)

DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "demo" / "checkpoint"
CPU = torch.device("cpu")
DEFERRED = "uint8, normalised on device"


# Two items, three images: a wide one (several tiles with --dynamic), a tall one, a small square.
IMAGES = [[noise_image(200, 90, seed=1)], [noise_image(60, 140, seed=2), noise_image(40, 40, seed=3)]]
PROMPTS = ["what colour is the circle ?", "describe the two images ."]


def collate(adapter, prompts=PROMPTS, images=IMAGES) -> ModelInputs:
    items = [Item(id=str(i), question=prompt) for i, prompt in enumerate(prompts)]
    return adapter.collate(items, list(prompts), [list(item_images) for item_images in images])


def processor_float_path(adapter: NativeImageTextAdapter, dynamic: bool) -> dict[str, torch.Tensor]:
    """The processor's own output (rescaled and normalised on the CPU), without our adapter code."""
    texts = [adapter.text(prompt, len(item_images)) for prompt, item_images in zip(PROMPTS, IMAGES)]
    flat = [image for item_images in IMAGES for image in item_images]
    return dict(adapter.processor(text=texts, images=flat, padding=True, return_tensors="pt",
                                  **native_processor_kwargs(dynamic, 4)))


# ----------------------------------------------------------------------------------------------
# PixelNormalization and ModelInputs


def test_normalization_of_bytes_is_rescale_then_mean_and_std_per_channel():
    normalization = PixelNormalization(1 / 255, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    pixel_bytes = torch.tensor([0, 255, 51], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    values = normalization.apply(pixel_bytes)
    assert values.dtype == torch.float32
    assert torch.allclose(values[:, 0, 0], torch.tensor([-1.0, 3.0, 0.1]))
    assert normalization.apply(pixel_bytes, torch.bfloat16).dtype == torch.bfloat16


def test_normalization_refuses_float_pixels():
    with pytest.raises(TypeError, match="uint8"):
        IMAGENET_NORMALIZATION.apply(torch.zeros(1, 3, 2, 2))


def test_model_inputs_normalise_uint8_pixels_after_the_move_into_the_float_dtype():
    pixel_bytes = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batch = ModelInputs({"input_ids": torch.ones(2, 3, dtype=torch.long), "pixel_values": pixel_bytes}, 2,
                        pixel_normalization=IMAGENET_NORMALIZATION)
    moved = batch.to(CPU, torch.bfloat16)
    assert moved["input_ids"].dtype == torch.long
    assert moved["pixel_values"].dtype == torch.bfloat16
    assert torch.equal(moved["pixel_values"], IMAGENET_NORMALIZATION.apply(pixel_bytes).to(torch.bfloat16))
    assert batch.tensors["pixel_values"].dtype == torch.uint8        # the batch itself is left as shipped


def test_model_inputs_never_cast_uint8_pixels_without_a_normalization():
    batch = ModelInputs({"pixel_values": torch.zeros(1, 3, 2, 2, dtype=torch.uint8)}, 1)
    assert batch.to(CPU, torch.bfloat16)["pixel_values"].dtype == torch.uint8


def test_model_inputs_keep_their_normalization_through_pickling():
    """DataLoader workers send the batch to the main process by pickling it."""
    batch = ModelInputs({"pixel_values": torch.zeros(1, 3, 2, 2, dtype=torch.uint8)}, 1,
                        pixel_normalization=IMAGENET_NORMALIZATION)
    assert pickle.loads(pickle.dumps(batch)).pixel_normalization == IMAGENET_NORMALIZATION


# ----------------------------------------------------------------------------------------------
# transformers-native adapter


@pytest.fixture(scope="module")
def native_adapters(native_checkpoint) -> dict[bool, NativeImageTextAdapter]:
    """One adapter per `--dynamic` setting (tiling off / on, up to 4 tiles)."""
    return {dynamic: load_adapter(make_args(native_checkpoint, dynamic=dynamic, max_num=4))
            for dynamic in (False, True)}


@pytest.mark.parametrize("dynamic", [False, True])
def test_native_deferred_pixels_equal_the_processors_float_pixels(native_adapters, dynamic):
    adapter = native_adapters[dynamic]
    assert adapter.describe()["pixel_transfer"] == DEFERRED
    batch = collate(adapter)
    expected = processor_float_path(adapter, dynamic)
    assert batch.tensors["pixel_values"].dtype == torch.uint8
    moved = batch.to(CPU, torch.float32)
    assert moved["pixel_values"].shape == expected["pixel_values"].shape
    assert float((moved["pixel_values"] - expected["pixel_values"]).abs().max()) < 1e-5
    assert torch.equal(moved["input_ids"], expected["input_ids"])
    tiles = expected["pixel_values"].shape[0]
    assert tiles > 3 if dynamic else tiles == 3          # --dynamic cut the wide image into several tiles


@pytest.mark.parametrize("switched_off", ["do_rescale", "do_normalize"])
def test_native_processor_that_cannot_defer_keeps_the_float_path(native_adapters, native_checkpoint,
                                                                  switched_off):
    model, tokenizer = native_adapters[True].model, native_adapters[True].tokenizer
    processor = load_processor(str(native_checkpoint), tokenizer, model.config)
    setattr(processor.image_processor, switched_off, False)
    adapter = NativeImageTextAdapter(model, processor, dynamic=True, max_num=4)
    assert adapter.pixel_normalization is None
    assert adapter.describe()["pixel_transfer"] == "float32"
    batch = collate(adapter)
    expected = processor_float_path(adapter, dynamic=True)
    assert batch.tensors["pixel_values"].dtype == torch.float32
    assert set(batch.tensors) == set(expected)
    assert all(torch.equal(batch.tensors[name], expected[name]) for name in expected)


def test_native_batch_without_images_carries_no_normalization(native_adapters):
    batch = collate(native_adapters[True], ["what is the colour of the sky ?"], [[]])
    assert "pixel_values" not in batch.tensors and batch.pixel_normalization is None


@pytest.mark.skipif(not (DEMO_CHECKPOINT / "config.json").is_file(), reason="demo/checkpoint missing")
def test_demo_model_greedy_predictions_with_deferral_equal_those_without():
    from eval_scripts.synthetic import (HELD_OUT_SEED, HELD_OUT_SPLIT, SyntheticShapesTask, make_item,
                                        normalize_answer)

    deferred = load_adapter(make_args(DEMO_CHECKPOINT))
    assert deferred.describe()["pixel_transfer"] == DEFERRED
    on_cpu = copy.copy(deferred)                    # same model and processor, float32 pixels from collate
    on_cpu.pixel_normalization = None
    synthetic = [make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, index) for index in range(16)]
    items = [Item(id=str(i), question=item.question) for i, item in enumerate(synthetic)]
    prompts = [SyntheticShapesTask().prompt(item) for item in items]
    images = [[item.image] for item in synthetic]
    settings = GenerationSettings(max_new_tokens=5)
    predictions = {}
    for name, adapter in (("deferred", deferred), ("on_cpu", on_cpu)):
        predictions[name] = []
        for start in range(0, len(items), 8):
            batch = adapter.collate(items[start:start + 8], prompts[start:start + 8], images[start:start + 8])
            predictions[name] += adapter.generate(batch, settings)
    assert predictions["deferred"] == predictions["on_cpu"]
    correct = sum(normalize_answer(p) == item.answer for p, item in zip(predictions["deferred"], synthetic))
    assert correct >= 12, predictions["deferred"]          # the model really reads the pixels


# ----------------------------------------------------------------------------------------------
# Remote-code InternVLChatModel (our tiling)


@pytest.fixture(scope="module")
def remote_adapter(remote_checkpoint) -> InternVLChatAdapter:
    return load_adapter(make_args(remote_checkpoint, trust_remote_code=True, dynamic=True, max_num=4))


def test_remote_collate_ships_uint8_and_generate_feeds_the_model_tiling_pixel_values(remote_adapter,
                                                                                     monkeypatch):
    model = remote_adapter.model
    received = {}
    original_generate = model.generate

    def recording_generate(*args, **kwargs):
        received["pixel_values"] = kwargs["pixel_values"]
        return original_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    batch = collate(remote_adapter)
    assert batch.tensors["pixel_values"].dtype == torch.uint8
    remote_adapter.generate(batch, GenerationSettings(max_new_tokens=2))
    expected = torch.cat([pixel_values(tile_image(image, 4, remote_adapter.image_size,
                                                  remote_adapter.use_thumbnail, dynamic=True),
                                       remote_adapter.image_size)
                          for item_images in IMAGES for image in item_images])
    assert received["pixel_values"].dtype == remote_adapter.dtype
    assert received["pixel_values"].shape == expected.shape and expected.shape[0] > 3
    assert torch.equal(received["pixel_values"].cpu(), expected.to(remote_adapter.dtype))
    assert remote_adapter.describe()["pixel_transfer"] == DEFERRED
