"""Sources of tiny remote code written the way code for transformers 4.3x was (our own code).

`tiny_models.build_remote_code_internvl(..., legacy=True)` ships them beside the tiny InternVLChatModel
imitation, so the tests reproduce each way InternVL's original code (InternLM2-based, from before its
August 2025 change) breaks under transformers 5.x (`launcher/remote_code.py`). The language model:

* a `PreTrainedModel` without `GenerationMixin` (5.x: no `generate`);
* `prepare_inputs_for_generation` that reads the cache as `past_key_values` legacy tuples
  (`past_key_values[0][0].shape[2]`) and feeds `inputs_embeds` only while there is no cache;
* a forward that takes and returns legacy `((key, value), ...)` tuples;
* a rotary embedding whose `inv_freq` / `cos_cached` / `sin_cached` are computed in `__init__` as
  non-persistent buffers (not saved; 5.x's meta-device loading leaves them uninitialised);
* a fused `wqkv` projection, RMSNorm, SwiGLU MLP (`w1`, `w3`, `w2`): InternLM2's layout, our code.

The chat model and its config (`legacy_chat_sources`): no `self.post_init()` at the end of the model's
`__init__`; a config class that picks the LLM config class by `llm_config["architectures"][0]` and, for a
missing `llm_config`, defaults to `{"architectures": [""]}`, so building a default config raises
`Unsupported architecture: ` (what transformers 5.17 does while reading a folder's config).
"""

LEGACY_LM_FILE = "modeling_tiny_legacy_lm.py"
LEGACY_LM_CONFIG_FILE = "configuration_tiny_legacy_lm.py"

LEGACY_LM_CONFIG_SOURCE = '''\
"""Configuration of the tiny legacy language model (launcher.tiny_legacy_remote)."""
from transformers import PretrainedConfig


class TinyLegacyLMConfig(PretrainedConfig):
    model_type = "tiny_legacy_lm"

    def __init__(self, vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
                 initializer_range=0.2, use_cache=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
'''

LEGACY_LM_SOURCE = '''\
"""A tiny language model in the style of remote LLM code written for transformers 4.3x
(launcher.tiny_legacy_remote): legacy tuple caches, rotary buffers built in __init__, no GenerationMixin."""
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_legacy_lm import TinyLegacyLMConfig


class TinyLegacyRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden):
        variance = hidden.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden.float() * torch.rsqrt(variance + self.eps)).to(hidden.dtype)


class TinyLegacyRotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings=512, base=10000.0, device=None):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float().to(device) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._set_cos_sin_cache(max_position_embeddings, self.inv_freq.device, torch.get_default_dtype())

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        positions = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(positions, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)

    def forward(self, x, seq_len):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len, x.device, torch.float32)
        return self.cos_cached[:seq_len].to(x.dtype), self.sin_cached[:seq_len].to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class TinyLegacyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.rotary_emb = TinyLegacyRotaryEmbedding(self.head_dim, config.max_position_embeddings,
                                                    config.rope_theta)

    def forward(self, hidden, mask, position_ids, past_key_value):
        batch, length, _ = hidden.shape
        qkv = self.wqkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        kv_length = length + (past_key_value[0].shape[2] if past_key_value is not None else 0)
        cos, sin = self.rotary_emb(value, seq_len=kv_length)
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        if past_key_value is not None:
            key = torch.cat([past_key_value[0], key], dim=2)
            value = torch.cat([past_key_value[1], value], dim=2)
        scores = query @ key.transpose(2, 3) / self.head_dim ** 0.5 + mask
        attention = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        output = (attention @ value).transpose(1, 2).reshape(batch, length, -1)
        return self.wo(output), (key, value)


class TinyLegacyLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = TinyLegacyAttention(config)
        self.attention_norm = TinyLegacyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = TinyLegacyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden, mask, position_ids, past_key_value):
        attended, present = self.attention(self.attention_norm(hidden), mask, position_ids, past_key_value)
        hidden = hidden + attended
        normed = self.ffn_norm(hidden)
        hidden = hidden + self.w2(nn.functional.silu(self.w1(normed)) * self.w3(normed))
        return hidden, present


class TinyLegacyPreTrainedModel(PreTrainedModel):
    config_class = TinyLegacyLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["TinyLegacyLayer"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)


class TinyLegacyModel(TinyLegacyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TinyLegacyLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = TinyLegacyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None):
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        batch, length, _ = inputs_embeds.shape
        past_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
            position_ids = position_ids.unsqueeze(0).expand(batch, -1)
        total = past_length + length
        causal = torch.full((length, total), float("-inf"), device=inputs_embeds.device)
        causal = torch.triu(causal, diagonal=past_length + 1)
        mask = causal[None, None].expand(batch, 1, length, total).to(inputs_embeds.dtype)
        if attention_mask is not None:
            padding = (1.0 - attention_mask[:, None, None, :total].to(inputs_embeds.dtype)) * -1e9
            mask = mask + padding
        hidden = inputs_embeds
        presents = ()
        for index, layer in enumerate(self.layers):
            past = past_key_values[index] if past_key_values is not None else None
            hidden, present = layer(hidden, mask, position_ids, past)
            presents += (present,)
        return self.norm(hidden), (presents if use_cache else None)


class TinyLegacyForCausalLM(TinyLegacyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = TinyLegacyModel(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, value):
        self.output = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        hidden, presents = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids, past_key_values=past_key_values,
                                      inputs_embeds=inputs_embeds, use_cache=use_cache)
        logits = self.output(hidden).float()
        return CausalLMOutputWithPast(logits=logits, past_key_values=presents)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, **kwargs):
        if past_key_values is not None:
            past_length = past_key_values[0][0].shape[2]
            keep_from = past_length if input_ids.shape[1] > past_length else input_ids.shape[1] - 1
            input_ids = input_ids[:, keep_from:]
        position_ids = kwargs.get("position_ids", None)
        if attention_mask is not None and position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1]:]
        if inputs_embeds is not None and past_key_values is None:
            model_inputs = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update({"position_ids": position_ids, "past_key_values": past_key_values,
                             "use_cache": kwargs.get("use_cache"), "attention_mask": attention_mask})
        return model_inputs
'''


LEGACY_CHAT_CONFIG_SOURCE = '''\
"""Configuration of the tiny InternVLChatModel-like test model, in the style of InternVL's
configuration_internvl_chat.py from before 2025 (launcher.tiny_legacy_remote)."""
from transformers import PretrainedConfig, Qwen2Config

from .configuration_tiny_legacy_lm import TinyLegacyLMConfig


class TinyInternVLChatConfig(PretrainedConfig):
    model_type = "tiny_internvl_chat"
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, force_image_size=56, downsample_ratio=0.5,
                 template="tiny_chatml", select_layer=-1, use_thumbnail=True, **kwargs):
        super().__init__(**kwargs)
        if llm_config is None:
            llm_config = {"architectures": [""]}
        self.vision_config = dict(vision_config or {"hidden_size": 32, "patch_size": 14,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2})
        if isinstance(llm_config, PretrainedConfig):
            self.llm_config = llm_config
        elif llm_config["architectures"][0] == "TinyLegacyForCausalLM":
            self.llm_config = TinyLegacyLMConfig(**llm_config)
        elif llm_config["architectures"][0] == "Qwen2ForCausalLM":
            self.llm_config = Qwen2Config(**llm_config)
        else:
            raise ValueError("Unsupported architecture: {}".format(llm_config["architectures"][0]))
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


def legacy_chat_modeling_source(modeling_source: str, *, llm: str, post_init: bool) -> str:
    """The tiny chat model's source, with the legacy LLM and/or without `self.post_init()`."""
    source = modeling_source
    if llm == "legacy":
        source = source.replace(
            "from .conversation import get_conv_template\n",
            "from .conversation import get_conv_template\nfrom .modeling_tiny_legacy_lm import TinyLegacyForCausalLM\n")
        source = source.replace(
            "self.language_model = language_model or Qwen2ForCausalLM(config.llm_config)",
            "self.language_model = language_model or (\n"
            "            TinyLegacyForCausalLM(config.llm_config)\n"
            "            if config.llm_config.architectures[0] == \"TinyLegacyForCausalLM\"\n"
            "            else Qwen2ForCausalLM(config.llm_config))")
        source = source.replace('_no_split_modules = ["Qwen2DecoderLayer", "TransformerEncoderLayer"]',
                                '_no_split_modules = ["Qwen2DecoderLayer", "TinyLegacyLayer", "TransformerEncoderLayer"]')
    if not post_init:
        source = source.replace("        self.img_context_token_id = None\n        self.post_init()\n",
                                "        self.img_context_token_id = None\n")
    return source
