"""Tiny offline checkpoints of transformers' native image-text families, for the family tests and benches.

`build_family(name, out_dir)` writes a random-weight checkpoint of one family (`FAMILIES` lists them) that
loads the way the real one does: the family's model class, its processor class with its own image
processor (the PIL backend, so no torchvision is needed) and the processor settings the real checkpoints
ship, and a word-level tokenizer that behaves like the real one where it matters to prompts:

* one distinct word per id (`launcher.tiny_models.DEFAULT_WORDS`), so equal text means equal tokens
  (special tokens aside, which decoding drops on both sides of a comparison);
* the family's special tokens (chat markers, image placeholders, the tokens its processor inserts), its
  BOS added automatically where the real tokenizer adds one (Llama, Mistral, Gemma, Cohere), none where
  the real one has none (Qwen);
* newlines are tokens (the real templates and processors put meaning in them: InternVL's `<IMG_CONTEXT>\\n`,
  Idefics3's rows of tiles);
* the family's chat template: our own text, written to give what the real template gives for the
  conversations an evaluation sends (one user turn of images then text, with or without a system turn,
  `add_generation_prompt=True`); PaliGemma ships none, as the real one.

Weights: text decoders are initialised with `initializer_range=0.2` and their output head scaled by
`LOGIT_SCALE` (sharp logits keep greedy choices away from float ties, so "equal tokens" tests are not
flaky; see `tiny_models`), vision towers with their defaults. Gemma-based families untie the head from the
embeddings: tied, a tiny Gemma repeats the prompt's last token. Sizes are a few hundred kB; each builds in about a
second. Everything here is data for tests: nothing from another project's code or template files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from launcher.tiny_models import DEFAULT_WORDS

NEWLINE = "\n"
# Words the families' templates and default system messages write, so prompts hold no unknown tokens.
TEMPLATE_WORDS = ("helpful", "inst", "sys", "model", "cutting", "knowledge", "date", "today", "december", "jul",
                  "2023", "2024", "26")


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokens a family's tokenizer has and how it adds them."""

    special: tuple[str, ...]                       # special tokens (ids after pad/unk/bos/eos)
    eos: str
    pad: str
    bos: str | None = None
    add_bos: bool = False                          # the real tokenizer prepends BOS by itself
    named: Mapping[str, str] | None = None         # attributes processors read (`tokenizer.image_token`, ...)
    unk: str = "<unk>"


@dataclass(frozen=True)
class Family:
    """One family of the table: how to build its tiny checkpoint and what to expect of it."""

    name: str                  # the key used by tests and the bench (often the model type)
    title: str                 # as the README names it
    model_type: str
    build: Callable[[Path, int], Path]
    needs_torchvision: bool = False      # its processor cannot be built without torchvision (transformers 5.2x)


# ------------------------------------------------------------------------------------------------
# Tokenizer


def word_tokenizer(spec: TokenizerSpec, chat_template: str | None,
                   words: Sequence[str] = DEFAULT_WORDS + TEMPLATE_WORDS) -> Any:
    """A `PreTrainedTokenizerFast` over `words` with the family's special tokens (module docstring).

    Ids: pad, unk, bos, eos, the other special tokens, newline, then the lower-cased words. Words are split
    from punctuation, newlines kept as tokens, other whitespace dropped; left padding.
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (spec.pad, spec.unk, spec.bos, spec.eos, *spec.special, NEWLINE):
        if token is not None and token not in vocab:
            vocab[token] = len(vocab)
    for word in words:
        word = word.lower()
        if word and word not in vocab:
            vocab[word] = len(vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=spec.unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True)
    if spec.add_bos:
        if spec.bos is None:
            raise ValueError("add_bos needs a bos token")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, vocab[spec.bos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=spec.pad, unk_token=spec.unk, bos_token=spec.bos, eos_token=spec.eos,
        extra_special_tokens=dict(spec.named or {}), model_input_names=["input_ids", "attention_mask"],
        padding_side="left", chat_template=chat_template)
    others = [token for token in spec.special if token not in (spec.named or {}).values()]
    if others:
        tokenizer.add_special_tokens({"additional_special_tokens": others}, replace_extra_special_tokens=False)
    return tokenizer


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [int(tokenizer.convert_tokens_to_ids(token)) for token in tokens]


# ------------------------------------------------------------------------------------------------
# Chat templates (ours; each reproduces what the family's real template renders for user turns of
# image and text parts, an optional system turn, assistant turns and the generation prompt)

QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message.role != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part.type == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL: the same turns, no default system message.
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part.type == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-1.5: "USER: <image>\n... ASSISTANT:" (the tokenizer adds BOS); images first, then the texts.
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message.role != 'system' %}{{ message.role | upper }}: {% endif %}"
    "{% for part in message.content if part.type == 'image' %}<image>\n{% endfor %}"
    "{% for part in message.content if part.type == 'text' %}{{ part.text }} {% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# LLaVA-NeXT (Mistral): "[INST] <image>\n... [/INST]" (the tokenizer adds BOS).
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message.role == 'system' %}<<SYS>>\n{{ message.content[0].text }}\n<</SYS>>\n\n"
    "{% elif message.role == 'user' %}[INST] "
    "{% for part in message.content if part.type == 'image' %}<image>\n{% endfor %}"
    "{% for part in message.content if part.type == 'text' %}{{ part.text }}{% endfor %}"
    " [/INST]"
    "{% elif message.role == 'assistant' %} {{ message.content[0].text }}</s> "
    "{% endif %}"
    "{% endfor %}"
)

# LLaVA-OneVision (Qwen2): "<|im_start|>user <image>\n...<|im_end|><|im_start|>assistant\n".
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }} "
    "{% for part in message.content if part.type == 'image' %}<image>{% endfor %}"
    "{% for part in message.content if part.type == 'video' %}<video>{% endfor %}"
    "{% for part in message.content if part.type == 'text' %}{{ '\\n' + part.text }}{% endfor %}"
    "<|im_end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Idefics3 (Llama 3): BOS written by the template, "User:<image>...<end_of_utterance>\nAssistant:".
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for message in messages %}"
    "{{ message.role | capitalize }}{{ ':' if message.content[0].type == 'image' else ': ' }}"
    "{% for part in message.content %}"
    "{% if part.type == 'text' %}{{ part.text }}{% elif part.type == 'image' %}<image>{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# SmolVLM: as Idefics3, opened by "<|im_start|>" (its tokenizer's BOS).
SMOLVLM_TEMPLATE = IDEFICS3_TEMPLATE.replace("<|begin_of_text|>", "<|im_start|>", 1)

# Gemma 3: BOS written by the template; a system turn is folded into the first user turn; "model" turns.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% set first = namespace(prefix='') %}"
    "{% if messages[0].role == 'system' %}"
    "{% set first.prefix = (messages[0].content if messages[0].content is string "
    "else messages[0].content[0].text) + '\\n\\n' %}"
    "{% set turns = messages[1:] %}"
    "{% else %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "<start_of_turn>{{ 'model' if message.role == 'assistant' else message.role }}\n"
    "{{ first.prefix if loop.first else '' }}"
    "{% if message.content is string %}{{ message.content | trim }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<start_of_image>"
    "{% elif part.type == 'text' %}{{ part.text | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Llama 3.2 Vision: BOS by the template; with images and no system turn, no system header is written.
MLLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set state = namespace(images=false) %}"
    "{% for message in messages %}{% if message.content is not string %}"
    "{% for part in message.content if part.type == 'image' %}{% set state.images = true %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if messages[0].role == 'system' %}"
    "{% set system = messages[0].content | trim %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{% if system is not none or not state.images %}"
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: "
    "{{ date_string if date_string is defined else (strftime_now('%d %b %Y') if strftime_now is defined "
    "else '26 Jul 2024') }}\n\n"
    "{{ system or '' }}<|eot_id|>"
    "{% endif %}"
    "{% for message in turns %}"
    "<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<|image|>{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# InternVL3 -hf (Qwen2.5): "<|im_start|>user\n<IMG_CONTEXT>\n...<|im_end|>\n<|im_start|>assistant\n".
INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part.type == 'video' %}<video>\n"
    "{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Aya Vision (Cohere2): BOS by the template, Cohere turn tokens, images as "<image>".
AYA_VISION_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|START_OF_TURN_TOKEN|>"
    "{{ {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'}[message.role] }}"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<image>{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|END_OF_TURN_TOKEN|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)

# GLM-4.1V: "[gMASK]<sop>" then "<|role|>\n" turns; images wrapped in begin/end markers.
GLM4V_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "<|{{ message.role }}|>\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part.type == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Mistral Small 3.1 (Mistral3): BOS by the template, then always a system prompt (the model's default one,
# dated today, when the conversation has none), then "[INST]...[IMG]...[/INST]" turns.
MISTRAL3_DEFAULT_SYSTEM = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup "
    "headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is "
    "\" + strftime_now('%Y-%m-%d') + \".\n\nWhen you're not sure about some information, you say that you don't "
    "have the information and don't make up anything.\nIf the user's question is not clear, ambiguous, or does "
    "not provide enough context for you to accurately answer the question, you do not try to answer it right "
    "away and you rather ask the user to clarify their request (e.g. \\\"What are some good restaurants around "
    "me?\\\" => \\\"Where are you?\\\" or \\\"When is the next flight to Tokyo\\\" => \\\"Where do you travel "
    "from?\\\")"
)
MISTRAL3_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0].role == 'system' %}"
    "{% set system = messages[0].content if messages[0].content is string else messages[0].content[0].text %}"
    "{% set turns = messages[1:] %}"
    "{% else %}{% set system = \"" + MISTRAL3_DEFAULT_SYSTEM + "\" %}{% set turns = messages %}{% endif %}"
    "[SYSTEM_PROMPT]{{ system }}[/SYSTEM_PROMPT]"
    "{% for message in turns %}"
    "{% if message.role == 'user' %}[INST]"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'text' %}{{ part.text }}{% elif part.type in ('image', 'image_url') %}[IMG]{% endif %}"
    "{% endfor %}{% endif %}[/INST]"
    "{% elif message.role == 'assistant' %}"
    "{{ message.content if message.content is string else message.content[0].text }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


# ------------------------------------------------------------------------------------------------
# Saving


LOGIT_SCALE = 4.0


def _sharpen(model: Any, scale: float = LOGIT_SCALE) -> None:
    """Scale the output head (module docstring: greedy margins well above float noise, so "equal tokens"
    compares decisions, not ties)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)


def _save(out: Path, model: Any, tokenizer: Any, image_processor: Any, processor_class: str,
          processor_settings: Mapping[str, Any], chat_template: str | None) -> Path:
    """Write what a real checkpoint folder holds: config and weights, tokenizer, image processor,
    processor_config.json (the processor's own settings) and chat_template.jinja.

    The processor is not saved through its own `save_pretrained`: without torchvision, processors that own a
    video processor cannot be constructed by transformers, so their files are written in the format
    transformers reads (`processor_class` plus the settings `__init__` takes)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "processor_config.json").write_text(
        json.dumps({"processor_class": processor_class, **processor_settings}, indent=2) + "\n")
    template_file = out / "chat_template.jinja"
    if chat_template is not None:
        template_file.write_text(chat_template)
    elif template_file.exists():
        template_file.unlink()
    return out


def _generation_ids(model: Any, tokenizer: Any, eos: Sequence[str]) -> None:
    """Generation settings as the real checkpoints ship them: their end tokens, the pad id, no BOS forcing."""
    eos_ids = _ids(tokenizer, *eos)
    model.generation_config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.do_sample = False
    for config in (model.config, model.config.get_text_config(decoder=True)):
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = eos_ids[0]


def _text(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """Common tiny text-decoder settings: the tokenizer's vocabulary and special ids, 64 wide, 2 layers,
    4 query / 2 key-value heads."""
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    return {"vocab_size": len(tokenizer), **ids, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "initializer_range": 0.2, **extra}


def _new_model(model_class: Any, config: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    model = model_class(config).eval()
    _sharpen(model)
    return model


# ------------------------------------------------------------------------------------------------
# Qwen2-VL, Qwen2.5-VL, Qwen3-VL

_QWEN_SPECIAL = ("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_TOKENS = TokenizerSpec(special=_QWEN_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")


def _qwen_image_processor(patch_size: int) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = patch_size * 2
    # 2x2 to 8x8 merged cells: 4 to 64 image tokens per image.
    return Qwen2VLImageProcessorPil(patch_size=patch_size, temporal_patch_size=2, merge_size=2,
                                    min_pixels=4 * factor * factor, max_pixels=64 * factor * factor)


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {"image_token_id": image, "video_token_id": video, "vision_start_token_id": start,
            "vision_end_token_id": end}


def build_qwen2_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = word_tokenizer(_QWEN_TOKENS, QWEN2_VL_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                           "mrope_section": [2, 3, 3]}),
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 4,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        **_qwen_ids(tokenizer))
    model = _new_model(Qwen2VLForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|im_end|>", "<|endoftext|>"])
    return _save(out, model, tokenizer, _qwen_image_processor(4), "Qwen2VLProcessor", {}, QWEN2_VL_TEMPLATE)


def build_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = word_tokenizer(_QWEN_TOKENS, QWEN2_VL_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                           "mrope_section": [2, 3, 3]}),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 4,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
                       "window_size": 16, "fullatt_block_indexes": [1]},
        **_qwen_ids(tokenizer))
    model = _new_model(Qwen2_5_VLForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|im_end|>", "<|endoftext|>"])
    return _save(out, model, tokenizer, _qwen_image_processor(4), "Qwen2_5_VLProcessor", {}, QWEN2_VL_TEMPLATE)


def build_qwen3_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = word_tokenizer(_QWEN_TOKENS, QWEN3_VL_TEMPLATE)
    config = Qwen3VLConfig(
        text_config=_text(tokenizer, head_dim=16,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 4,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        **_qwen_ids(tokenizer))
    model = _new_model(Qwen3VLForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|im_end|>", "<|endoftext|>"])
    return _save(out, model, tokenizer, _qwen_image_processor(4), "Qwen3VLProcessor", {}, QWEN3_VL_TEMPLATE)


# ------------------------------------------------------------------------------------------------
# LLaVA, LLaVA-NeXT, LLaVA-OneVision

_LLAMA2_TOKENS = TokenizerSpec(special=("<image>",), eos="</s>", pad="<pad>", bos="<s>", add_bos=True)
_CLIP_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 7, "projection_dim": 32}
_LLAVA_PROCESSOR = {"patch_size": 7, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
                    "image_token": "<image>"}


def build_llava(out: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = word_tokenizer(_LLAMA2_TOKENS, LLAVA_TEMPLATE)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**_CLIP_TINY), text_config=LlamaConfig(**_text(tokenizer)),
                         image_token_index=_ids(tokenizer, "<image>")[0], image_seq_length=16,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = _new_model(LlavaForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["</s>"])
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                             do_center_crop=True)
    return _save(out, model, tokenizer, image_processor, "LlavaProcessor", _LLAVA_PROCESSOR, LLAVA_TEMPLATE)


def build_llava_next(out: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[28, 56], [56, 28], [56, 56]]
    tokenizer = word_tokenizer(_LLAMA2_TOKENS, LLAVA_NEXT_TEMPLATE)
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**_CLIP_TINY),
                             text_config=MistralConfig(**_text(tokenizer, sliding_window=None)),
                             image_token_index=_ids(tokenizer, "<image>")[0], image_grid_pinpoints=pinpoints,
                             image_seq_length=16, vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = _new_model(LlavaNextForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["</s>"])
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                 image_grid_pinpoints=pinpoints)
    return _save(out, model, tokenizer, image_processor, "LlavaNextProcessor", _LLAVA_PROCESSOR, LLAVA_NEXT_TEMPLATE)


def build_llava_onevision(out: Path, seed: int = 0) -> Path:
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    spec = TokenizerSpec(special=("<|im_start|>", "<image>", "<video>"), eos="<|im_end|>", pad="<|endoftext|>")
    tokenizer = word_tokenizer(spec, LLAVA_ONEVISION_TEMPLATE)
    image, video = _ids(tokenizer, "<image>", "<video>")
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=28, patch_size=7),
        text_config=Qwen2Config(**_text(tokenizer)), image_token_index=image, video_token_index=video,
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9")
    model = _new_model(LlavaOnevisionForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|im_end|>", "<|endoftext|>"])
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    settings = {"num_image_tokens": 16, "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
                "image_token": "<image>", "video_token": "<video>"}
    return _save(out, model, tokenizer, image_processor, "LlavaOnevisionProcessor", settings,
                 LLAVA_ONEVISION_TEMPLATE)


# ------------------------------------------------------------------------------------------------
# Idefics3, SmolVLM

_GRID_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))
_IDEFICS_IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>", *_GRID_TOKENS)


def _idefics_vision(config_class: Any) -> Any:
    return config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=28, patch_size=7)


def build_idefics3(out: Path, seed: int = 0) -> Path:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig, LlamaConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    spec = TokenizerSpec(special=("<end_of_utterance>", *_IDEFICS_IMAGE_TOKENS), eos="<|end_of_text|>",
                         pad="<|reserved_special_token_0|>", bos="<|begin_of_text|>", add_bos=True)
    tokenizer = word_tokenizer(spec, IDEFICS3_TEMPLATE)
    config = Idefics3Config(vision_config=_idefics_vision(Idefics3VisionConfig),
                            text_config=LlamaConfig(**_text(tokenizer)),
                            image_token_id=_ids(tokenizer, "<image>")[0], scale_factor=2)
    model = _new_model(Idefics3ForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<end_of_utterance>", "<|end_of_text|>"])
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 56}, max_image_size={"longest_edge": 28},
                                                do_image_splitting=True)
    return _save(out, model, tokenizer, image_processor, "Idefics3Processor", {"image_seq_len": 4}, IDEFICS3_TEMPLATE)


def build_smolvlm(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    spec = TokenizerSpec(special=("<end_of_utterance>", "<video>", *_IDEFICS_IMAGE_TOKENS), eos="<|im_end|>",
                         pad="<|im_end|>", bos="<|im_start|>")
    tokenizer = word_tokenizer(spec, SMOLVLM_TEMPLATE)
    config = SmolVLMConfig(vision_config=_idefics_vision(SmolVLMVisionConfig),
                           text_config=LlamaConfig(**_text(tokenizer)),
                           image_token_id=_ids(tokenizer, "<image>")[0], scale_factor=2)
    model = _new_model(SmolVLMForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<end_of_utterance>", "<|im_end|>"])
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 56}, max_image_size={"longest_edge": 28},
                                               do_image_splitting=True)
    return _save(out, model, tokenizer, image_processor, "SmolVLMProcessor", {"image_seq_len": 4}, SMOLVLM_TEMPLATE)


# ------------------------------------------------------------------------------------------------
# Gemma 3, PaliGemma

_GEMMA_SPECIAL = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")


def _siglip_tiny() -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=7)


def build_gemma3(out: Path, seed: int = 0) -> Path:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    spec = TokenizerSpec(special=_GEMMA_SPECIAL, eos="<eos>", pad="<pad>", bos="<bos>", add_bos=True,
                         named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                "eoi_token": "<end_of_image>"})
    tokenizer = word_tokenizer(spec, GEMMA3_TEMPLATE)
    boi, eoi, image = _ids(tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    text = Gemma3TextConfig(**_text(tokenizer, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                                    tie_word_embeddings=False,
                                    layer_types=["sliding_attention", "full_attention"]))
    config = Gemma3Config(text_config=text, vision_config=_siglip_tiny(), mm_tokens_per_image=4,
                          boi_token_index=boi, eoi_token_index=eoi, image_token_index=image,
                          tie_word_embeddings=False)
    model = _new_model(Gemma3ForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<eos>", "<end_of_turn>"])
    image_processor = Gemma3ImageProcessorPil(size={"height": 28, "width": 28}, do_pan_and_scan=False)
    return _save(out, model, tokenizer, image_processor, "Gemma3Processor", {"image_seq_length": 4}, GEMMA3_TEMPLATE)


def build_paligemma(out: Path, seed: int = 0) -> Path:
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    spec = TokenizerSpec(special=("<image>",), eos="<eos>", pad="<pad>", bos="<bos>", add_bos=True,
                         named={"image_token": "<image>"})
    tokenizer = word_tokenizer(spec, None)
    text = GemmaConfig(**_text(tokenizer, head_dim=16, tie_word_embeddings=False))
    config = PaliGemmaConfig(text_config=text, vision_config=_siglip_tiny(), image_token_index=_ids(tokenizer, "<image>")[0],
                             projection_dim=64, hidden_size=64, tie_word_embeddings=False)
    config.text_config.num_image_tokens = 16
    model = _new_model(PaliGemmaForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<eos>"])
    image_processor = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    image_processor.image_seq_length = 16
    return _save(out, model, tokenizer, image_processor, "PaliGemmaProcessor", {}, None)


# ------------------------------------------------------------------------------------------------
# Llama 3.2 Vision (Mllama)


def build_mllama(out: Path, seed: int = 0) -> Path:
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    spec = TokenizerSpec(special=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>"),
                         eos="<|end_of_text|>", pad="<|finetune_right_pad_id|>", bos="<|begin_of_text|>",
                         add_bos=True)
    tokenizer = word_tokenizer(spec, MLLAMA_TEMPLATE)
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_global_layers": 1, "attention_heads": 2,
              "intermediate_size": 64, "intermediate_layers_indices": [0], "vision_output_dim": 64,
              "image_size": 28, "patch_size": 7, "max_num_tiles": 2,
              "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]}
    text = _text(tokenizer, num_hidden_layers=3, cross_attention_layers=[1])
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=_ids(tokenizer, "<|image|>")[0])
    model = _new_model(MllamaForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|eot_id|>", "<|end_of_text|>"])
    image_processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2)
    return _save(out, model, tokenizer, image_processor, "MllamaProcessor", {}, MLLAMA_TEMPLATE)


# ------------------------------------------------------------------------------------------------
# InternVL (-hf), Aya Vision


def _got_ocr2_image_processor(size: int, crop_to_patches: bool) -> Any:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=crop_to_patches,
                                    min_patches=1, max_patches=4, image_mean=[0.485, 0.456, 0.406],
                                    image_std=[0.229, 0.224, 0.225])


def build_internvl(out: Path, seed: int = 0) -> Path:
    from transformers import InternVLForConditionalGeneration

    from launcher.tiny_models import tiny_internvl_config

    spec = TokenizerSpec(special=("<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"), eos="<|im_end|>",
                         pad="<|endoftext|>",
                         named={"start_image_token": "<img>", "end_image_token": "</img>",
                                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    tokenizer = word_tokenizer(spec, INTERNVL_TEMPLATE)
    config = tiny_internvl_config(len(tokenizer), _ids(tokenizer, "<IMG_CONTEXT>")[0], text_layers=2)
    model = _new_model(InternVLForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|im_end|>", "<|endoftext|>"])
    return _save(out, model, tokenizer, _got_ocr2_image_processor(56, crop_to_patches=False), "InternVLProcessor",
                 {"image_seq_length": int(config.image_seq_length)}, INTERNVL_TEMPLATE)


def build_aya_vision(out: Path, seed: int = 0) -> Path:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, Cohere2Config

    tiles = tuple(f"TILE_{index}" for index in range(1, 5)) + ("TILE_GLOBAL",)
    spec = TokenizerSpec(special=("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                                  "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<image>", "<|START_OF_IMG|>",
                                  "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", *tiles),
                         eos="<|END_OF_TURN_TOKEN|>", pad="<PAD>", bos="<BOS_TOKEN>", add_bos=True)
    tokenizer = word_tokenizer(spec, AYA_VISION_TEMPLATE)
    text = Cohere2Config(**_text(tokenizer, head_dim=16, sliding_window=64,
                                 layer_types=["sliding_attention", "full_attention"]))
    config = AyaVisionConfig(vision_config=_siglip_tiny(), text_config=text, downsample_factor=2,
                             vision_feature_select_strategy="full", vision_feature_layer=-1,
                             image_token_index=_ids(tokenizer, "<|IMG_PATCH|>")[0])
    model = _new_model(AyaVisionForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|END_OF_TURN_TOKEN|>"])
    settings = {"patch_size": 7, "img_size": 28, "downsample_factor": 2, "image_token": "<image>"}
    return _save(out, model, tokenizer, _got_ocr2_image_processor(28, crop_to_patches=True), "AyaVisionProcessor",
                 settings, AYA_VISION_TEMPLATE)


# ------------------------------------------------------------------------------------------------
# GLM-4.1V


def build_glm4v(out: Path, seed: int = 0) -> Path:
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    special = ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
               "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>")
    spec = TokenizerSpec(special=special, eos="<|endoftext|>", pad="<|endoftext|>")
    tokenizer = word_tokenizer(spec, GLM4V_TEMPLATE)
    image, video, image_start, image_end, video_start, video_end = _ids(
        tokenizer, "<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
        "<|end_of_video|>")
    config = Glm4vConfig(
        text_config=_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                           "mrope_section": [2, 3, 3],
                                                           "partial_rotary_factor": 1.0}),
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 4,
                       "image_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64},
        image_token_id=image, video_token_id=video, image_start_token_id=image_start, image_end_token_id=image_end,
        video_start_token_id=video_start, video_end_token_id=video_end)
    model = _new_model(Glm4vForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["<|endoftext|>", "<|user|>"])
    image_processor = Glm4vImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                             size={"shortest_edge": 4 * 64, "longest_edge": 64 * 64})
    return _save(out, model, tokenizer, image_processor, "Glm4vProcessor", {}, GLM4V_TEMPLATE)


# ------------------------------------------------------------------------------------------------
# Mistral 3 (its PixtralProcessor needs torchvision in transformers 5.2x)


def build_mistral3(out: Path, seed: int = 0) -> Path:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    spec = TokenizerSpec(special=("[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]",
                                  "[/SYSTEM_PROMPT]"), eos="</s>", pad="<pad>", bos="<s>", add_bos=True)
    tokenizer = word_tokenizer(spec, MISTRAL3_TEMPLATE)
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 head_dim=16, image_size=56, patch_size=7)
    config = Mistral3Config(vision_config=vision, text_config=MistralConfig(**_text(tokenizer, head_dim=16)),
                            image_token_index=_ids(tokenizer, "[IMG]")[0], spatial_merge_size=2)
    model = _new_model(Mistral3ForConditionalGeneration, config, seed)
    _generation_ids(model, tokenizer, ["</s>"])
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 56}, patch_size=7)
    settings = {"patch_size": 7, "spatial_merge_size": 2, "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
                "image_end_token": "[IMG_END]"}
    return _save(out, model, tokenizer, image_processor, "PixtralProcessor", settings, MISTRAL3_TEMPLATE)


# ------------------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("qwen2_vl", "Qwen2-VL", "qwen2_vl", build_qwen2_vl),
    Family("qwen2_5_vl", "Qwen2.5-VL", "qwen2_5_vl", build_qwen2_5_vl),
    Family("qwen3_vl", "Qwen3-VL", "qwen3_vl", build_qwen3_vl),
    Family("llava", "LLaVA-1.5", "llava", build_llava),
    Family("llava_next", "LLaVA-NeXT", "llava_next", build_llava_next),
    Family("llava_onevision", "LLaVA-OneVision", "llava_onevision", build_llava_onevision),
    Family("idefics3", "Idefics3", "idefics3", build_idefics3),
    Family("smolvlm", "SmolVLM", "smolvlm", build_smolvlm),
    Family("gemma3", "Gemma 3", "gemma3", build_gemma3),
    Family("paligemma", "PaliGemma", "paligemma", build_paligemma),
    Family("mllama", "Llama 3.2 Vision (Mllama)", "mllama", build_mllama),
    Family("internvl", "InternVL (-hf)", "internvl", build_internvl),
    Family("aya_vision", "Aya Vision", "aya_vision", build_aya_vision),
    Family("glm4v", "GLM-4.1V", "glm4v", build_glm4v),
    Family("mistral3", "Mistral 3 (Pixtral vision)", "mistral3", build_mistral3, needs_torchvision=True),
)}


def build_family(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint of family `name` (a key of `FAMILIES`) into `out_dir`; returns the folder."""
    try:
        family = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None
    return family.build(Path(out_dir), seed)
