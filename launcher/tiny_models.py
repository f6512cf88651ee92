"""Tiny offline checkpoints shaped like InternVL, for tests, the demo and demo training.

Two kinds of checkpoint, both a few hundred kB and built in about a second without a network:

* `build_native_internvl(out_dir)`: a transformers-native InternVL (`InternVLForConditionalGeneration`,
  the `-hf` layout: `model.vision_tower`, `model.multi_modal_projector`, `model.language_model`,
  `lm_head`) with a word-level tokenizer, a `GotOcr2ImageProcessorPil` image processor (no torchvision
  needed) and a chat template. It loads with our loader and with plain transformers 5.x
  (`AutoTokenizer` + `AutoImageProcessor` + `InternVLProcessor(...)`, `AutoModelForImageTextToText`).
* `build_remote_code_internvl(out_dir)`: a checkpoint whose `config.json` has an `auto_map` to
  `modeling_tiny_internvl_chat.py` written into the folder: an `InternVLChatModel`-like class with the
  original module names (`vision_model`, `mlp1`, `language_model` = a tiny `Qwen2ForCausalLM`) and
  InternVL's `chat` / `batch_chat` / `generate` semantics (a `conversation.py` with
  `get_conv_template`, template "tiny_chatml": `<|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n`,
  `use_thumbnail=True`, `force_image_size` 56, 4 image tokens per tile). It loads only with
  `trust_remote_code=True`; its tokenizer is `build_tokenizer()`'s. Its tiles come from
  `launcher.tiling`, as for a real InternVL remote-code checkpoint (no image processor saved).

Decisions:

* Tokenizer: a `tokenizers` WordLevel model over a fixed vocabulary (`DEFAULT_WORDS` by default) with a
  `Lowercase` normaliser, so "Red" and "red" are one token and decoded text is lower case; special tokens
  are matched before normalisation and keep their case. Unknown words become `<unk>`. The `Whitespace`
  pre-tokeniser splits words from punctuation and drops newlines: the chat template's "\\n" are not
  tokens, which is harmless for a model trained with this tokenizer.
* Special tokens: `<pad>`, `<unk>`, `<s>` (bos, never added automatically), `<|im_start|>`,
  `<|im_end|>` (eos: the end of an assistant turn, as InternVL's Qwen-based checkpoints), `<img>`,
  `</img>`, `<IMG_CONTEXT>`, `<video>`; the four image ones are also exposed as the named attributes
  that `InternVLProcessor` reads (`start_image_token`, `end_image_token`, `context_image_token`,
  `video_token`). Padding side is left (batched generation).
* Chat template: Qwen / InternVL style, `<|im_start|>role\\n ... <|im_end|>\\n`, an image part of a
  user message rendered as `<IMG_CONTEXT>\\n` (what the native processor expands into
  `<img>` + `<IMG_CONTEXT>` x image_seq_length x tiles + `</img>`), then the text.
* Weights: the text model is initialised with `initializer_range=0.2` (transformers' default 0.02 gives
  near-flat logits, where float noise between a batch of 4 and a batch of 1 can flip a greedy choice;
  sharper logits make "batched output equals batch-1 output" a meaningful, non-flaky test).
* A checkpoint saved by transformers 5.x does not load in 4.x: build test models at test time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

if TYPE_CHECKING:  # imported lazily at run time: transformers takes seconds to import
    from transformers import InternVLConfig, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
VIDEO_TOKEN = "<video>"

SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN,
    IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN, VIDEO_TOKEN,
)

# What InternVLProcessor reads from the tokenizer, by attribute name.
NAMED_IMAGE_TOKENS: dict[str, str] = {
    "start_image_token": IMG_START_TOKEN,
    "end_image_token": IMG_END_TOKEN,
    "context_image_token": IMG_CONTEXT_TOKEN,
    "video_token": VIDEO_TOKEN,
}

_DIGITS = [str(d) for d in range(10)]
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve "
                 "twenty hundred thousand first second third last").split()
_COLOURS = ("red green blue yellow orange purple pink brown black white gray grey "
            "cyan magenta gold silver dark light colour color colors colours").split()
_SHAPES = ("circle circles square squares triangle triangles rectangle star diamond oval "
           "line lines dot dots shape shapes box boxes ring cross arrow heart").split()
_POSITIONS = ("left right top bottom middle center centre above below under over next beside "
              "between inside outside front behind near far up down corner side").split()
_SIZES = "big small large tiny huge short long tall wide narrow bigger smaller largest smallest".split()
_QUESTION_WORDS = ("what which who whom whose where when why how many much is are was were do does "
                   "did can could will would should there here this that these those it its they "
                   "the a an of in on at to for with by from and or not no yes").split()
_VQA_WORDS = ("answer question image picture photo word phrase single using please describe "
              "count number object objects color kind type name text say written sign shown "
              "show see seen visible background foreground chart graph table value total "
              "title label year person people man woman child dog cat car bus tree sky water "
              "grass road building house book table chair cup bottle ball plane train bird "
              "option options letter correct choose unanswerable unknown none both all some "
              "most least more less same different other than only each every have has "
              "be been being you your i me my we our he she him her them their").split()
_ROLE_WORDS = "system user assistant frame".split()
_PUNCTUATION = list(".,?!:;'\"()-/%+=&*#@$[]")
_LETTERS = list("abcdefghijklmnopqrstuvwxyz")

DEFAULT_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    _DIGITS + _NUMBER_WORDS + _COLOURS + _SHAPES + _POSITIONS + _SIZES + _QUESTION_WORDS
    + _VQA_WORDS + _ROLE_WORDS + _PUNCTUATION + _LETTERS))

# Qwen / InternVL-hf style. Image parts become the context token the native processor expands.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_tokenizer(words: Sequence[str] = DEFAULT_WORDS) -> PreTrainedTokenizerFast:
    """An offline word-level `PreTrainedTokenizerFast` over `words` plus `SPECIAL_TOKENS`.

    Ids: the special tokens first (0 = `<pad>`), then the lower-cased words in order (duplicates
    dropped). Left padding, eos `<|im_end|>`, and the chat template above.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for word in words:
        word = word.lower()
        if word and word not in vocab:
            vocab[word] = len(vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=IM_END_TOKEN,
        extra_special_tokens=dict(NAMED_IMAGE_TOKENS),
        # Without this, token_type_ids appear and generate() rejects them.
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    # Role markers are special too, so skip_special_tokens removes them from decoded text.
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START_TOKEN]},
                                 replace_extra_special_tokens=False)
    return tokenizer


def tiny_internvl_config(
    vocab_size: int,
    image_token_id: int,
    *,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 4,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    **overrides: Any,
) -> InternVLConfig:
    """A tiny transformers-native `InternVLConfig` (Qwen2 text model, tied embeddings).

    `image_seq_length` = (image_size / patch_size)^2 * downsample_ratio^2, as InternVL's
    `num_image_token`. `overrides` go to `InternVLConfig` (e.g. `downsample_ratio`); keys prefixed
    `text_` or `vision_` that are not parameters above go to the text / vision sub-config
    (`text_initializer_range=0.02`, `vision_intermediate_size=128`).
    """
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    text_extra = {k[len("text_"):]: v for k, v in overrides.items() if k.startswith("text_")}
    vision_extra = {k[len("vision_"):]: v for k, v in overrides.items() if k.startswith("vision_")}
    top = {k: v for k, v in overrides.items() if not k.startswith(("text_", "vision_"))}
    downsample_ratio = top.pop("downsample_ratio", 0.5)
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    image_seq_length = int(grid * grid * downsample_ratio * downsample_ratio)

    vision_config = InternVLVisionConfig(**{
        "hidden_size": vision_hidden, "num_hidden_layers": vision_layers,
        "num_attention_heads": vision_heads, "intermediate_size": 2 * vision_hidden,
        "image_size": [image_size, image_size], "patch_size": [patch_size, patch_size],
        **vision_extra})
    text_config = Qwen2Config(**{
        "vocab_size": vocab_size, "hidden_size": text_hidden, "num_hidden_layers": text_layers,
        "num_attention_heads": text_heads, "num_key_value_heads": text_kv_heads,
        "intermediate_size": 2 * text_hidden, "max_position_embeddings": 2048,
        "tie_word_embeddings": True, "initializer_range": 0.2, "rope_theta": 10000.0,
        **text_extra})
    return InternVLConfig(**{
        "vision_config": vision_config, "text_config": text_config,
        "image_token_id": image_token_id, "image_seq_length": image_seq_length,
        "downsample_ratio": downsample_ratio, "tie_word_embeddings": True, **top})


def _image_processor(image_size: int) -> Any:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    # InternVL's preprocessing: bicubic resize to the tile size, ImageNet mean/std; tiling
    # (crop_to_patches) is off by default and switched on per call for --dynamic.
    return GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=False,
        min_patches=1, max_patches=12, do_resize=True, do_rescale=True, do_normalize=True,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True)


def build_native_internvl(
    out_dir: str | Path,
    *,
    words: Sequence[str] = DEFAULT_WORDS,
    seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None,
    model: Any = None,
) -> Path:
    """Save a tiny transformers-native InternVL checkpoint into `out_dir` and return its path.

    With `model` (e.g. a trained one), save that model; its config must match the tokenizer built from
    `words`. Saved: model (safetensors), tokenizer (with chat template), image processor
    (`GotOcr2ImageProcessorPil`), `processor_config.json` (image_seq_length) and
    `chat_template.jinja`. Load with `InternVLProcessor(image_processor=AutoImageProcessor...,
    tokenizer=AutoTokenizer..., image_seq_length=...)`, since without torchvision
    `AutoProcessor` refuses.
    """
    from transformers import InternVLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(words)
    if model is None:
        image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        config = tiny_internvl_config(len(tokenizer), image_token_id, **dict(config_overrides or {}))
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config)
    config = model.config
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"model vocabulary {config.text_config.vocab_size} is smaller than the "
                         f"tokenizer's {len(tokenizer)}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_size = config.vision_config.image_size
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    _image_processor(int(image_size)).save_pretrained(out)
    # The processor itself cannot be saved without torchvision (it wants a video processor), so its
    # own settings are written by hand in the format transformers reads.
    (out / "processor_config.json").write_text(json.dumps(
        {"processor_class": "InternVLProcessor", "image_seq_length": int(config.image_seq_length)},
        indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


# --------------------------------------------------------------------------------------------------
# Remote-code checkpoint (InternVLChatModel-like), written into the folder as source files.

REMOTE_MODELING_FILE = "modeling_tiny_internvl_chat.py"
REMOTE_CONFIG_FILE = "configuration_tiny_internvl_chat.py"
REMOTE_CONVERSATION_FILE = "conversation.py"

_REMOTE_CONFIGURATION_SOURCE = '''\
"""Configuration of the tiny InternVLChatModel-like test model (launcher.tiny_models)."""
from transformers import PretrainedConfig, Qwen2Config


class TinyInternVLChatConfig(PretrainedConfig):
    model_type = "tiny_internvl_chat"
    sub_configs = {"llm_config": Qwen2Config}

    def __init__(self, vision_config=None, llm_config=None, force_image_size=56, downsample_ratio=0.5,
                 template="tiny_chatml", select_layer=-1, use_thumbnail=True, **kwargs):
        super().__init__(**kwargs)
        self.vision_config = dict(vision_config or {"hidden_size": 32, "patch_size": 14,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2})
        if isinstance(llm_config, Qwen2Config):
            self.llm_config = llm_config
        else:
            self.llm_config = Qwen2Config(**(llm_config or {}))
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.select_layer = select_layer
        self.use_thumbnail = use_thumbnail

    def to_dict(self):
        output = super().to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output
'''

_REMOTE_CONVERSATION_SOURCE = '''\
"""A minimal conversation template, shaped like InternVL's conversation.get_conv_template."""
import dataclasses


@dataclasses.dataclass
class Conversation:
    name: str
    system_template: str = "<|im_start|>system\\n{system_message}"
    system_message: str = ""
    roles: tuple = ("<|im_start|>user\\n", "<|im_start|>assistant\\n")
    sep: str = "<|im_end|>\\n"
    messages: list = dataclasses.field(default_factory=list)

    def append_message(self, role, message):
        self.messages.append([role, message])

    def get_prompt(self):
        prompt = ""
        if self.system_message:
            prompt = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            prompt += role + (message + self.sep if message is not None else "")
        return prompt


def get_conv_template(name):
    return Conversation(name=name)
'''

_REMOTE_MODELING_SOURCE = '''\
"""A tiny InternVLChatModel-like model (launcher.tiny_models): InternVL's module names and its
chat / batch_chat / generate semantics, over a small ViT and a Qwen2ForCausalLM."""
import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, Qwen2ForCausalLM

from .configuration_tiny_internvl_chat import TinyInternVLChatConfig
from .conversation import get_conv_template

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


class TinyVisionModel(nn.Module):
    """Patch embedding, position embedding, a few transformer encoder layers (with a class token)."""

    def __init__(self, image_size, patch_size, hidden_size, num_layers, num_heads):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, hidden_size, patch_size, stride=patch_size)
        grid = image_size // patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.2)
        self.position_embedding = nn.Parameter(torch.randn(1, grid * grid + 1, hidden_size) * 0.2)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 2 * hidden_size, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, pixel_values):
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], -1, -1).to(patches.dtype)
        hidden = torch.cat([cls, patches], dim=1) + self.position_embedding.to(patches.dtype)
        return self.encoder(hidden)


class TinyInternVLChatModel(PreTrainedModel):
    config_class = TinyInternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = ""
    _no_split_modules = ["Qwen2DecoderLayer", "TransformerEncoderLayer"]
    _supports_sdpa = True

    def __init__(self, config, vision_model=None, language_model=None):
        super().__init__(config)
        vision = config.vision_config
        image_size = config.force_image_size
        patch_size = vision["patch_size"]
        self.template = config.template
        self.system_message = ""
        self.downsample_ratio = config.downsample_ratio
        self.select_layer = config.select_layer
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio ** 2))
        self.vision_model = vision_model or TinyVisionModel(
            image_size, patch_size, vision["hidden_size"], vision["num_hidden_layers"],
            vision["num_attention_heads"])
        self.language_model = language_model or Qwen2ForCausalLM(config.llm_config)
        vit_hidden = vision["hidden_size"]
        llm_hidden = config.llm_config.hidden_size
        scale = int(1 / config.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vit_hidden * scale), nn.Linear(vit_hidden * scale, llm_hidden), nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden))
        self.img_context_token_id = None
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.2)

    def pixel_shuffle(self, x, scale_factor=0.5):
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        return x.permute(0, 2, 1, 3).contiguous()

    def extract_feature(self, pixel_values):
        vit_embeds = self.vision_model(pixel_values)[:, 1:, :]
        side = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], side, side, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    def _prompt(self, question, history=None):
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        for old_question, old_answer in history or []:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        return template, template.get_prompt()

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None,
             return_history=False, num_patches_list=None, IMG_START_TOKEN=IMG_START_TOKEN,
             IMG_END_TOKEN=IMG_END_TOKEN, IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False):
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError("pixel_values has %d tiles, num_patches_list sums to %d"
                             % (len(pixel_values), sum(num_patches_list)))
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        template, query = self._prompt(question, history)
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep.strip())
        for num_patches in num_patches_list:
            image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            query = query.replace("<image>", image_tokens, 1)
        model_inputs = tokenizer(query, return_tensors="pt")
        device = self.language_model.get_input_embeddings().weight.device
        generation_config = dict(generation_config, eos_token_id=eos_token_id)
        output = self.generate(pixel_values=pixel_values, input_ids=model_inputs["input_ids"].to(device),
                               attention_mask=model_inputs["attention_mask"].to(device),
                               **generation_config)
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split(template.sep.strip())[0].strip()
        history = list(history or []) + [(question, response)]
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, ""), response)
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None,
                   history=None, return_history=False, IMG_START_TOKEN=IMG_START_TOKEN,
                   IMG_END_TOKEN=IMG_END_TOKEN, IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False,
                   image_counts=None):
        if history is not None or return_history:
            raise NotImplementedError("multi-turn chat is not supported in batch_chat")
        if image_counts is not None:
            num_patches_list = image_counts
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        for index, num_patches in enumerate(num_patches_list):
            question = questions[index]
            if pixel_values is not None and "<image>" not in question:
                question = "<image>\\n" + question
            template, query = self._prompt(question)
            image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            queries.append(query.replace("<image>", image_tokens, 1))
        tokenizer.padding_side = "left"
        model_inputs = tokenizer(queries, return_tensors="pt", padding=True)
        device = self.language_model.get_input_embeddings().weight.device
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep.strip())
        generation_config = dict(generation_config, eos_token_id=eos_token_id)
        output = self.generate(pixel_values=pixel_values, input_ids=model_inputs["input_ids"].to(device),
                               attention_mask=model_inputs["attention_mask"].to(device),
                               **generation_config)
        responses = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [response.split(template.sep.strip())[0].strip() for response in responses]

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config=None, output_hidden_states=None, **generate_kwargs):
        if self.img_context_token_id is None:
            raise ValueError("img_context_token_id is not set (call chat/batch_chat or set it)")
        embedding = self.language_model.get_input_embeddings()
        input_embeds = embedding(input_ids)
        if pixel_values is not None or visual_features is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(
                pixel_values.to(embedding.weight.device, embedding.weight.dtype))
            batch, length, channels = input_embeds.shape
            input_embeds = input_embeds.reshape(batch * length, channels)
            selected = input_ids.reshape(batch * length) == self.img_context_token_id
            input_embeds[selected] = vit_embeds.reshape(-1, channels).to(input_embeds.device, input_embeds.dtype)
            input_embeds = input_embeds.reshape(batch, length, channels)
        return self.language_model.generate(
            inputs_embeds=input_embeds, attention_mask=attention_mask,
            generation_config=generation_config, output_hidden_states=output_hidden_states,
            use_cache=True, **generate_kwargs)
'''


def build_remote_code_internvl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    words: Sequence[str] = DEFAULT_WORDS,
    image_size: int = 56,
    patch_size: int = 14,
    legacy: bool = False,
    post_init: bool | None = None,
) -> Path:
    """Save a tiny remote-code InternVLChatModel-like checkpoint into `out_dir`; return its path.

    `config.json` maps `AutoConfig` / `AutoModel` / `AutoModelForCausalLM` to classes in source
    files written beside it, so it loads only with `trust_remote_code=True`. Module names follow
    the original InternVL (`vision_model`, `mlp1`, `language_model.model.layers.N`,
    `language_model.lm_head`); the tokenizer is `build_tokenizer(words)`.

    `legacy=True` reproduces InternVL's pre-August-2025 InternLM2-based folders with our own code
    (`launcher.tiny_legacy_remote`): an LLM written for transformers 4.3x (`language_model.model.
    tok_embeddings`, `language_model.output`, legacy tuple caches, rotary buffers built in `__init__`),
    a config class that raises `Unsupported architecture: ` when built without `llm_config`, and (unless
    `post_init=True`) no `self.post_init()` in the chat model. `post_init=False` alone drops the call
    from the Qwen2-based imitation.
    """
    import importlib.util
    import sys
    import tempfile

    from launcher import tiny_legacy_remote as legacy_sources

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(words)
    post_init = (not legacy) if post_init is None else post_init
    modeling_source = legacy_sources.legacy_chat_modeling_source(
        _REMOTE_MODELING_SOURCE, llm="legacy" if legacy else "qwen2", post_init=post_init)
    sources = {
        REMOTE_CONFIG_FILE: legacy_sources.LEGACY_CHAT_CONFIG_SOURCE if legacy else _REMOTE_CONFIGURATION_SOURCE,
        REMOTE_CONVERSATION_FILE: _REMOTE_CONVERSATION_SOURCE,
        REMOTE_MODELING_FILE: modeling_source,
    }
    if legacy:
        sources[legacy_sources.LEGACY_LM_CONFIG_FILE] = legacy_sources.LEGACY_LM_CONFIG_SOURCE
        sources[legacy_sources.LEGACY_LM_FILE] = legacy_sources.LEGACY_LM_SOURCE
    # Build the model from the same source the checkpoint ships, imported as a throw-away package
    # (the relative imports need one), so what is saved is exactly what trust_remote_code loads.
    package_name = f"_tiny_internvl_chat_build_{seed}_{id(out)}"
    with tempfile.TemporaryDirectory() as scratch:
        package_dir = Path(scratch) / package_name
        package_dir.mkdir()
        (package_dir / "__init__.py").write_text("")
        for name, source in sources.items():
            (package_dir / name).write_text(source)
        sys.path.insert(0, scratch)
        try:
            modeling = importlib.import_module(f"{package_name}.modeling_tiny_internvl_chat")
            configuration = importlib.import_module(f"{package_name}.configuration_tiny_internvl_chat")
        finally:
            sys.path.remove(scratch)
        llm_config = dict(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
            tie_word_embeddings=False, initializer_range=0.2, rope_theta=10000.0,
            architectures=["Qwen2ForCausalLM"], eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
        if legacy:
            llm_config = dict(
                vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=512, rope_theta=10000.0, initializer_range=0.2,
                architectures=["TinyLegacyForCausalLM"], eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id)
        config = configuration.TinyInternVLChatConfig(
            vision_config={"hidden_size": 32, "patch_size": patch_size, "num_hidden_layers": 2,
                           "num_attention_heads": 2},
            llm_config=llm_config, force_image_size=image_size, downsample_ratio=0.5,
            template="tiny_chatml", architectures=["TinyInternVLChatModel"],
            auto_map={
                "AutoConfig": "configuration_tiny_internvl_chat.TinyInternVLChatConfig",
                "AutoModel": "modeling_tiny_internvl_chat.TinyInternVLChatModel",
                "AutoModelForCausalLM": "modeling_tiny_internvl_chat.TinyInternVLChatModel",
            })
        if legacy:
            # transformers 5.17 builds a default config while saving; the shipped class cannot (on purpose).
            from launcher.remote_code import default_subconfigs

            default_subconfigs(configuration.TinyInternVLChatConfig, {"llm_config": llm_config})
        torch.manual_seed(seed)
        model = modeling.TinyInternVLChatModel(config)
        if not post_init:
            # Saving needs what post_init sets up; the folder's code still lacks the call.
            model.post_init()
        model.save_pretrained(out, safe_serialization=True)
        for module in list(sys.modules):
            if module.startswith(package_name):
                del sys.modules[module]
    for name, source in sources.items():
        (out / name).write_text(source)
    # save_pretrained rewrote config.json with our temporary module path in auto_map; restore the
    # folder-relative names trust_remote_code resolves.
    config_path = out / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json["auto_map"] = {
        "AutoConfig": "configuration_tiny_internvl_chat.TinyInternVLChatConfig",
        "AutoModel": "modeling_tiny_internvl_chat.TinyInternVLChatModel",
        "AutoModelForCausalLM": "modeling_tiny_internvl_chat.TinyInternVLChatModel",
    }
    config_path.write_text(json.dumps(config_json, indent=2) + "\n")
    tokenizer.save_pretrained(out)
    return out


__all__ = [
    "DEFAULT_WORDS", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "IMG_START_TOKEN", "IMG_END_TOKEN",
    "IMG_CONTEXT_TOKEN", "VIDEO_TOKEN", "IM_START_TOKEN", "IM_END_TOKEN", "PAD_TOKEN",
    "build_tokenizer", "tiny_internvl_config", "build_native_internvl", "build_remote_code_internvl",
]

