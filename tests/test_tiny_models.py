"""The tiny offline checkpoints load with plain transformers and behave like InternVL's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launcher.tiny_models import (
    CHAT_TEMPLATE, DEFAULT_WORDS, IMG_CONTEXT_TOKEN, IM_END_TOKEN, build_native_internvl,
    build_tokenizer, tiny_internvl_config)

pytestmark = pytest.mark.timeout(120)


def test_tokenizer_is_word_level_lower_case_and_left_padded():
    tokenizer = build_tokenizer(["red", "circle", "?"])
    ids = tokenizer("Red circle ?")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["red", "circle", "?"]
    assert tokenizer("purple")["input_ids"] == [tokenizer.unk_token_id]
    assert tokenizer.padding_side == "left"
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert tokenizer.eos_token == IM_END_TOKEN


def test_tokenizer_exposes_the_image_tokens_the_native_processor_reads():
    tokenizer = build_tokenizer()
    assert tokenizer.context_image_token == IMG_CONTEXT_TOKEN
    assert tokenizer.start_image_token == "<img>" and tokenizer.end_image_token == "</img>"
    assert tokenizer.video_token == "<video>"
    assert tokenizer.context_image_token_id == tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    # Special tokens keep their case (matched before the lower-casing normaliser).
    assert tokenizer.convert_ids_to_tokens(tokenizer("<IMG_CONTEXT>")["input_ids"]) == [IMG_CONTEXT_TOKEN]


def test_default_words_are_a_few_hundred_unique_words():
    assert 250 <= len(DEFAULT_WORDS) <= 1000
    assert len(set(DEFAULT_WORDS)) == len(DEFAULT_WORDS)
    assert {"red", "circle", "left", "how", "many", "3"} <= set(DEFAULT_WORDS)


def test_decoding_skips_special_tokens():
    tokenizer = build_tokenizer()
    ids = tokenizer("<|im_start|>assistant red circle<|im_end|>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "assistant red circle"


def test_config_image_seq_length_follows_image_and_patch_size():
    config = tiny_internvl_config(100, 7, image_size=56, patch_size=14)
    assert config.image_seq_length == 4       # (56/14)^2 * 0.5^2
    config = tiny_internvl_config(100, 7, image_size=64, patch_size=8, text_initializer_range=0.02)
    assert config.image_seq_length == 16
    assert config.text_config.initializer_range == 0.02
    assert config.tie_word_embeddings


def test_native_checkpoint_loads_with_plain_transformers(native_checkpoint: Path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from launcher.adapters import load_image_processor

    tokenizer = AutoTokenizer.from_pretrained(native_checkpoint)
    image_processor = load_image_processor(str(native_checkpoint))
    model = AutoModelForImageTextToText.from_pretrained(native_checkpoint)
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert type(image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert image_processor.size["height"] == 56
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert (native_checkpoint / "model.safetensors").is_file()
    names = {name for name, _ in model.named_modules()}
    assert {"model.vision_tower", "model.multi_modal_projector", "model.language_model.layers.3", "lm_head"} <= names
    assert json.loads((native_checkpoint / "processor_config.json").read_text())["image_seq_length"] == 4


def test_native_checkpoint_can_save_a_given_model(tmp_path: Path):
    from transformers import AutoModelForImageTextToText, InternVLForConditionalGeneration

    tokenizer = build_tokenizer()
    config = tiny_internvl_config(len(tokenizer), tokenizer.context_image_token_id, text_layers=2)
    torch.manual_seed(3)
    model = InternVLForConditionalGeneration(config)
    build_native_internvl(tmp_path, model=model)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_remote_checkpoint_needs_trust_remote_code(remote_checkpoint: Path):
    from transformers import AutoModel

    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained(remote_checkpoint, trust_remote_code=False)


def test_remote_checkpoint_has_internvl_module_names_and_chat(remote_checkpoint: Path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(remote_checkpoint, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(remote_checkpoint, trust_remote_code=True)
    names = {name for name, _ in model.named_modules()}
    assert {"vision_model", "mlp1", "language_model.model.layers.3", "language_model.model.embed_tokens",
            "language_model.lm_head"} <= names
    assert model.num_image_token == 4
    torch.manual_seed(0)
    pixel_values = torch.randn(3, 3, 56, 56)
    settings = {"max_new_tokens": 6, "do_sample": False}
    one = model.chat(tokenizer, pixel_values[:1], "what colour is it ?", settings)
    two = model.chat(tokenizer, pixel_values[1:], "how many circles ?", settings)
    assert isinstance(one, str) and one
    assert model.batch_chat(tokenizer, pixel_values, ["what colour is it ?", "how many circles ?"], settings,
                            num_patches_list=[1, 2]) == [one, two]
    response, history = model.chat(tokenizer, pixel_values[:1], "what colour is it ?", settings, return_history=True)
    assert response == one and history == [("<image>\nwhat colour is it ?", one)]
