"""Adapters: the text they generate equals what the model's own API generates, batched or not."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from eval_scripts.base import DataError, Item
from launcher.adapters import (
    CausalLMAdapter, InternVLChatAdapter, ModelInputs, NativeImageTextAdapter, internvl_question)
from launcher.generation import GenerationSettings
from launcher.loading import load_adapter
from tests.inputs import make_args

pytestmark = pytest.mark.timeout(240)

GREEDY = GenerationSettings(max_new_tokens=6)


def picture(width: int, height: int, colour: tuple[int, int, int], shape: str = "circle") -> Image.Image:
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


# Varied prompt lengths and image sizes (so batches need padding, and --dynamic gives varied tile counts).
CASES = [
    ("what colour is the circle ?", [picture(56, 56, (220, 20, 20))]),
    ("how many shapes are there in the picture ? answer using a single word .", [picture(120, 60, (20, 20, 220), "square")]),
    ("is it big ?", [picture(60, 140, (20, 180, 20))]),
    ("which shape is on the left ?", [picture(200, 90, (230, 200, 0), "square")]),
    ("describe the two images .", [picture(56, 56, (220, 20, 20)), picture(90, 60, (20, 20, 220), "square")]),
    ("what is the colour of the sky ?", []),
]


def items_for(cases) -> tuple[list[Item], list[str], list[list[Image.Image]]]:
    items = [Item(id=str(i), question=prompt) for i, (prompt, _) in enumerate(cases)]
    return items, [prompt for prompt, _ in cases], [list(images) for _, images in cases]


def run(adapter, cases, batch_size: int) -> list[str]:
    outputs = []
    for start in range(0, len(cases), batch_size):
        items, prompts, images = items_for(cases[start:start + batch_size])
        outputs += adapter.generate(adapter.collate(items, prompts, images), GREEDY)
    return outputs


# ----------------------------------------------------------------------------------------------
# transformers-native InternVL


@pytest.fixture(scope="module")
def native_adapter(native_checkpoint) -> NativeImageTextAdapter:
    adapter = load_adapter(make_args(native_checkpoint, dynamic=True, max_num=4))
    assert isinstance(adapter, NativeImageTextAdapter)
    return adapter


def plain_transformers_generate(checkpoint: Path, prompt: str, images: list[Image.Image], max_num: int) -> str:
    """Reference without our code: tokenizer, GotOcr2 image processor, InternVL's token expansion by hand."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    image_processor = GotOcr2ImageProcessorPil.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    inputs = {}
    if images:
        processed = image_processor(images, crop_to_patches=True, max_patches=max_num, return_tensors="pt")
        inputs["pixel_values"] = processed["pixel_values"]
        pieces = text.split("<IMG_CONTEXT>")
        text = pieces[0]
        for num_patches, piece in zip(processed["num_patches"], pieces[1:]):
            text += "<img>" + "<IMG_CONTEXT>" * model.config.image_seq_length * int(num_patches) + "</img>" + piece
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**encoded, **inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_native_adapter_matches_plain_transformers(native_adapter, native_checkpoint):
    expected = [plain_transformers_generate(native_checkpoint, prompt, images, max_num=4)
                for prompt, images in CASES[:3] + CASES[4:5]]
    assert run(native_adapter, CASES[:3] + CASES[4:5], batch_size=1) == expected
    assert all(expected)


def test_native_batched_greedy_equals_batch_of_one(native_adapter):
    singles = run(native_adapter, CASES, batch_size=1)
    assert run(native_adapter, CASES, batch_size=4) == singles
    assert len(set(singles)) > 1       # the model is not answering the same thing to everything


def test_native_batch_is_left_padded(native_adapter):
    items, prompts, images = items_for(CASES[:4])
    batch = native_adapter.collate(items, prompts, images)
    mask = batch.tensors["attention_mask"]
    assert mask[:, -1].all()                       # every row ends with a real token
    assert not mask[:, 0].all()                    # and the shorter rows start with padding
    assert len(batch) == 4


def test_native_multi_image_item_has_one_image_block_per_image(native_adapter):
    items, prompts, images = items_for(CASES[4:5])
    batch = native_adapter.collate(items, prompts, images)
    start_id = native_adapter.tokenizer.convert_tokens_to_ids("<img>")
    assert int((batch.tensors["input_ids"] == start_id).sum()) == 2


def test_native_cost_counts_the_image_tokens_the_processor_makes(native_adapter):
    prompt, images = CASES[3]
    item = Item(id="x", question=prompt)
    batch = native_adapter.collate([item], [prompt], [images])
    tokenizer = native_adapter.tokenizer
    image_token_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>")]
    image_tokens = int(torch.isin(batch.tensors["input_ids"], torch.tensor(image_token_ids)).sum())
    with_image = native_adapter.estimate_cost(item, prompt, [image.size for image in images])
    without = native_adapter.estimate_cost(item, prompt, [])
    assert with_image - without == image_tokens
    assert image_tokens > 2 + 4                  # --dynamic tiled the wide image into several tiles


def test_native_describe_names_the_image_processor_backend(native_adapter):
    description = native_adapter.describe()
    assert description["adapter"] == "native_image_text"
    assert description["model_class"] == "InternVLForConditionalGeneration"
    assert description["image_processor"] == "GotOcr2ImageProcessorPil"
    assert description["dtype"] == "float32"
    assert description["processor_kwargs"]


def test_native_8bit_model_generates(native_checkpoint):
    adapter = load_adapter(make_args(native_checkpoint, load_in_8bit=True))
    texts = run(adapter, CASES[:2], batch_size=2)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    assert adapter.describe()["quantization"] == "8bit"


# ----------------------------------------------------------------------------------------------
# Remote-code InternVLChatModel


@pytest.fixture(scope="module")
def remote_adapter(remote_checkpoint) -> InternVLChatAdapter:
    adapter = load_adapter(make_args(remote_checkpoint, trust_remote_code=True, dynamic=True, max_num=4))
    assert isinstance(adapter, InternVLChatAdapter)
    return adapter


def test_internvl_question_places_one_placeholder_per_image():
    assert internvl_question("what ?", 0) == "what ?"
    assert internvl_question("what ?", 1) == "<image>\nwhat ?"
    assert internvl_question("what ?", 2) == "Image-1: <image>\nImage-2: <image>\nwhat ?"
    assert internvl_question("<image> vs <image> ?", 2) == "<image> vs <image> ?"


def test_remote_adapter_equals_batch_chat_and_per_item_chat(remote_adapter):
    model, tokenizer = remote_adapter.model, remote_adapter.tokenizer
    cases = [case for case in CASES if len(case[1]) == 1]
    pixel_values = [remote_adapter.tiles(images[0]) for _, images in cases]
    questions = [prompt for prompt, _ in cases]
    config = {"max_new_tokens": GREEDY.max_new_tokens, "do_sample": False, "num_beams": 1}
    per_item = [model.chat(tokenizer, pixels, question, config) for pixels, question in zip(pixel_values, questions)]
    batched = model.batch_chat(tokenizer, torch.cat(pixel_values), questions, config,
                               num_patches_list=[p.shape[0] for p in pixel_values])
    assert batched == per_item
    assert run(remote_adapter, cases, batch_size=len(cases)) == per_item
    assert run(remote_adapter, cases, batch_size=1) == per_item
    assert len({p.shape[0] for p in pixel_values}) > 1   # --dynamic gave different tile counts


def test_remote_multi_image_and_text_only_items_equal_chat(remote_adapter):
    model, tokenizer = remote_adapter.model, remote_adapter.tokenizer
    config = {"max_new_tokens": GREEDY.max_new_tokens, "do_sample": False}
    prompt, images = CASES[4]
    pixels = [remote_adapter.tiles(image) for image in images]
    multi = model.chat(tokenizer, torch.cat(pixels), internvl_question(prompt, 2), config,
                       num_patches_list=[p.shape[0] for p in pixels])
    text_prompt, _ = CASES[5]
    text_only = model.chat(tokenizer, None, text_prompt, config)
    assert run(remote_adapter, [CASES[4], CASES[5], CASES[0]], batch_size=3)[:2] == [multi, text_only]


def test_remote_batched_greedy_equals_batch_of_one(remote_adapter):
    assert run(remote_adapter, CASES, batch_size=4) == run(remote_adapter, CASES, batch_size=1)


def test_remote_cost_counts_tiles(remote_adapter):
    prompt, images = CASES[3]
    item = Item(id="x", question=prompt)
    tiles = remote_adapter.tiles(images[0]).shape[0]
    assert remote_adapter.tile_count(*images[0].size) == tiles
    with_image = remote_adapter.estimate_cost(item, prompt, [images[0].size])
    assert with_image - remote_adapter.estimate_cost(item, prompt, []) == tiles * remote_adapter.num_image_token + 2


def test_remote_describe(remote_adapter):
    description = remote_adapter.describe()
    assert description["adapter"] == "internvl_chat"
    assert description["model_class"] == "TinyInternVLChatModel"
    assert description["dynamic"] is True and description["max_num"] == 4


# ----------------------------------------------------------------------------------------------
# Text-only causal LM


@pytest.fixture(scope="module")
def causal_checkpoint(tmp_path_factory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from launcher.tiny_models import build_tokenizer

    folder = tmp_path_factory.mktemp("causal_lm")
    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, initializer_range=0.2,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_causal_lm_batched_equals_batch_of_one(causal_checkpoint):
    adapter = load_adapter(make_args(causal_checkpoint))
    assert isinstance(adapter, CausalLMAdapter)
    cases = [(prompt, []) for prompt, _ in CASES]
    assert run(adapter, cases, batch_size=3) == run(adapter, cases, batch_size=1)


def test_causal_lm_refuses_items_with_images(causal_checkpoint):
    adapter = load_adapter(make_args(causal_checkpoint))
    items, prompts, images = items_for(CASES[:1])
    with pytest.raises(DataError, match="text-only model"):
        adapter.collate(items, prompts, images)


def test_model_inputs_move_and_cast_floating_tensors():
    batch = ModelInputs({"input_ids": torch.ones(2, 3, dtype=torch.long), "pixel_values": torch.zeros(1, 3)}, 2)
    moved = batch.to(torch.device("cpu"), torch.bfloat16)
    assert moved["input_ids"].dtype == torch.long and moved["pixel_values"].dtype == torch.bfloat16


def test_collate_never_touches_cuda(native_adapter, remote_adapter, monkeypatch):
    """collate runs in forked DataLoader workers, where initialising CUDA would fail."""
    def refuse(*args, **kwargs):
        raise AssertionError("collate touched CUDA")

    for name in ("_lazy_init", "current_device", "is_available", "device_count", "set_device"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    for adapter in (native_adapter, remote_adapter):
        items, prompts, images = items_for(CASES)
        batch = adapter.collate(items, prompts, images)
        assert all(tensor.device.type == "cpu" for tensor in batch.tensors.values())
