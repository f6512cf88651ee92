"""Greedy decoding with the decode step captured once in a CUDA graph and replayed.

Plain `model.generate` spends a decode step of a 2B model mostly in Python and kernel launches. This
module runs the same greedy decoding with the step's launches recorded once (`torch.cuda.CUDAGraph`)
and replayed. Measured on one H100 (bench/decode_graph.py, 2B shape, bf16, 1024 realistic items, 16 new
tokens, torch 2.11, transformers 5.17): at batch 256 a decode step takes 47 ms in `generate`, 18.8 ms
with our step run eagerly and 7.0 ms replayed from the graph (batch 128: 30.7 / 18.2 / 5.9 ms); whole
items/s 139 -> 213 (batch 128: 107 -> 203). The replayed step is GPU-bound: about 1350 small kernels
(6.7 ms of kernel time at batch 256, 4.7 ms at batch 32), so what remains is fusion, not launches.
Capture takes 0.1-0.15 s per shape.

    decoder = GreedyDecoder(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            use_cuda_graph=True)
    new_tokens = decoder.generate(inputs, max_new_tokens=16)      # == generate(...)[:, input_len:]
    # or, one call, one decoder (graphs are not kept between calls):
    new_tokens = greedy_generate(model, inputs, 16, eos_token_id, pad_token_id, use_cuda_graph=True)

Use it only where `generate` would decode greedily (num_beams 1, no sampling) and where
`unsupported_reason(model)` returns None (no logits processors in the generation config, SDPA or
eager attention, full-attention layers only, no cross-attention layers, one device). Image-text families are
further limited to those proven equal by tests (`launcher.adapters.FAST_DECODE_PROVEN`). The caller chooses between this and
`generate`; nothing here falls back silently: a failed capture raises `FastDecodeError`.

What it computes, and why it equals `generate` (transformers 5.2x, `_sample` + `prepare_inputs_for_generation`):

1. Prefill: one call of the full model (`model(**inputs, cache=StaticCache, position_ids=...,
   logits_to_keep=1)`: vision tower, projector and the language model over the prompt). Position ids
   are generate's own (`generation_position_ids`: the model's `_prepare_position_ids_for_generation`):
   `attention_mask.cumsum(-1) - 1`, set to 0 where the mask is 0, for most models; `[4, B, L]` for M-RoPE
   models (Qwen2/2.5/3-VL, GLM-4.1V: text positions, then temporal / height / width positions of the image
   grid); an all-ones mask is dropped as generate drops it (SDPA then takes its causal path). The first token
   is the argmax of the last position's logits. Each decode step then continues every position channel by
   one from the prompt's last position, as generate extends `position_ids`.
2. Decode step: `model.model.language_model(input_ids [B, 1], position_ids [B, 1], cache,
   attention_mask [B, 1, 1, cache_length])`, `model.lm_head` on the last hidden state, argmax;
   rows that have emitted EOS get `pad_token_id` (generate's `next_tokens * unfinished + pad * (1 -
   unfinished)`). The 4D mask is passed to the model as prepared (transformers' mask code returns a 4D
   mask unchanged): the prompt's attention mask, then one more column per step. For SDPA it is boolean
   (True = attend), for eager attention additive (0 = attend, the dtype's minimum = masked), the two forms
   transformers' own mask functions build for them.
   Every input of the step is a static buffer updated in place by the step itself (the token, the
   position ids, the mask column, the output column, the finished rows): the step reads nothing on
   the host, so the same launches replay for every step. The cache writes where its own device-side
   counter points (`StaticLayer.cumulative_length`), which our `write_index` mirrors for the mask.
3. The output has generate's columns: generate stops when every row has emitted EOS, so it returns
   `max(tokens up to and including each row's EOS)` columns (or `max_new_tokens`); after a row's EOS
   the row holds `pad_token_id`. We track each row's length on the device and cut the output once at
   the end (one host sync). `eos_token_id=None` means no EOS stop (generate would fall back to
   `model.generation_config.eos_token_id`; the caller passes what it wants).

Early stop without a sync per step: after each step the "all rows finished" flag is copied to pinned
host memory without blocking, and the host reads the previous step's flag, as transformers'
`DeferredStopCheck` does. So at most one step more than needed runs, its tokens are all padding and
nothing of it is returned. On CPU the flag is read directly.

Graphs and caches are kept per shape `(batch size, cache length)`: a `StaticCache` (K/V of the whole
batch, about 0.9 GB for the 2B shape at batch 256 and 384 positions), the static buffers and, with
graphs, the captured step. The cache length is `prompt length + max_new_tokens` rounded up to a multiple
of `length_bucket` (64), so batches whose padded prompts differ by a few tokens share one graph: the
columns past the current position are masked and inert, at the cost of reading up to 63 more masked
K/V columns per step. At most `max_shapes` (3) shapes are kept, least recently used evicted, which
bounds GPU memory; the contents of a reused cache are reset before its prefill.

Attention in the step: with SDPA, the step's layers call `decode_sdpa_attention` (registered with
transformers' `AttentionInterface` as "fast_decode_sdpa" and selected on the text config only while the
step runs). For one query token it folds the query heads that share a K/V head into the query-length
axis (`[B, heads, 1, d]` -> `[B, kv_heads, heads / kv_heads, d]`) and calls SDPA on the cache as it is.
transformers 5.17's SDPA path instead copies K/V `heads / kv_heads` times for any masked call
(`repeat_kv`): measured on an H100 at batch 256, 2B shape, that copy was about 19 of the step's 29 ms
(0.34 ms a layer for K and V, against 0.07 ms for the packed SDPA call). transformers 5.24 packs the
same way itself (`pack_gqa`); the results are the same per head, only the kernels differ. Prefill keeps
the model's own attention.

Capture: the step runs `warmup_steps` (2) times on a side stream (from the prefilled state, which is
restored after each run), then once under `torch.cuda.graph`. Nothing in transformers' decode path
(5.17 and 5.24: Qwen2/Llama layers, `StaticLayer.update`, rotary embedding, SDPA with a prepared mask)
reads device values on the host, so capture needs no patching of transformers.

Numerics: in float32 the tokens equal generate's exactly, on CPU and on an H100 with the graph
(tests/test_fast_decode.py). In bf16 on a GPU the step's attention runs other SDPA kernels than
generate's (static masked cache, packed heads), so near-tied logits can pick another token: with random
weights (flat logits) the first token agreed on 100% of 1024 items and the whole 16-token sequence on
43-48%; replayed and eager steps agreed on 100%.
"""
from __future__ import annotations

import inspect
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

DEFAULT_LENGTH_BUCKET = 64
DEFAULT_MAX_SHAPES = 3
DEFAULT_WARMUP_STEPS = 2
# A shape's step is captured on its second batch: a shape seen once (the last, short batch; the shrinking
# tail of the dynamic schedule, where nearly every batch size differs) runs eagerly, which costs about what
# its capture would (at batch 256 on an H100: 15 eager steps ~12 ms slower each vs ~0.15 s of capture).
DEFAULT_CAPTURE_AFTER_USES = 2

# Generation-config fields that add a logits processor or stopping rule to greedy decoding, with their
# values that change nothing. Any other value makes generate's greedy tokens differ from a plain argmax.
_NEUTRAL_GENERATION_SETTINGS: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
    "prefill_chunk_size": (None,),
    "num_beams": (None, 1),
    "do_sample": (None, False),
}


DECODE_ATTENTION = "fast_decode_sdpa"


class FastDecodeError(RuntimeError):
    """The fast decoder cannot run this model or batch (capture failed, unsupported model): use `generate`."""


def decode_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with grouped K/V heads read in place for a single masked query token.

    `query [B, heads, 1, d]` becomes `[B, kv_heads, groups, d]`, so the mask `[B, 1, 1, L]` broadcasts and the
    cache `[B, kv_heads, L, d]` is used as it is (no `repeat_kv` copy). Anything else goes to
    `sdpa_attention_forward` unchanged. Returns `[B, 1, heads, d]`, as `sdpa_attention_forward` does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    batch, heads, query_length, _ = query.shape
    plain = (query_length != 1 or groups == 1 or attention_mask is None or attention_mask.shape[-3] != 1
             or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
             or key.shape[1] * groups != heads)
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    packed = query.reshape(batch, heads // groups, groups, query.shape[-1])
    output = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask,
                                                              dropout_p=dropout, scale=scaling)
    return output.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _register_decode_attention() -> None:
    from transformers import AttentionInterface

    if DECODE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(DECODE_ATTENTION, decode_sdpa_attention)


def unsupported_reason(model: Any) -> str | None:
    """Why `GreedyDecoder` would not reproduce `model.generate`'s greedy tokens, or None when it would.

    Checks the structure (a decoder and `lm_head`), the attention implementation (SDPA or eager: the
    step passes a 4D mask, which flash/flex attention do not take), full attention in every
    layer (no sliding window: the step has one mask), one device, and the model's generation config
    (no repetition penalty, forced or suppressed tokens, minimum length, stop strings, beams, sampling).
    """
    try:
        _decoder_and_head(model)
    except FastDecodeError as error:
        return str(error)
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    text_config = config.get_text_config(decoder=True)
    if getattr(text_config, "cross_attention_layers", None):
        return ("cross-attention layers (Mllama): the decode step would need the image's cross-attention states "
                "and mask, which only generate carries")
    attention = getattr(text_config, "_attn_implementation", None) or "eager"
    if attention not in ("sdpa", "eager"):
        return f"attention implementation {attention!r}: only 'sdpa' and 'eager' take the step's 4D mask"
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types):
        return f"layer types {sorted(set(layer_types))}: only full-attention layers are supported"
    if getattr(text_config, "use_sliding_window", False) and getattr(text_config, "sliding_window", None):
        return "sliding-window attention is not supported"
    device_map = getattr(model, "hf_device_map", None) or {}
    devices = {str(device) for device in device_map.values()}
    if len(devices) > 1:
        return f"the model is spread over {len(devices)} devices ({', '.join(sorted(devices))}): one device only"
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        for name, neutral in _NEUTRAL_GENERATION_SETTINGS.items():
            value = getattr(generation_config, name, None)
            if value not in neutral:
                return f"generation_config.{name}={value!r} changes greedy decoding"
    return None


def prompt_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """generate's position ids for a left-padded prompt: `cumsum(mask) - 1`, 0 where the mask is 0."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 0)


def generation_position_ids(model: Any, inputs: Mapping[str, torch.Tensor], attention_mask: torch.Tensor
                            ) -> torch.Tensor:
    """The prompt's position ids exactly as `generate` prepares them: the model's own
    `_prepare_position_ids_for_generation` (transformers 5.x), which M-RoPE models (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL, GLM-4.1V) override to return `[4, B, L]`: the 1-D text positions, then the temporal, height and
    width positions of `get_rope_index` (image tokens on a grid, text after them continuing from the largest
    position). Other models give `cumsum(mask) - 1`; without the method (older transformers), that too."""
    prepare = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare is None:
        return prompt_position_ids(attention_mask)
    model_kwargs = {key: value for key, value in inputs.items() if key not in ("input_ids", "position_ids")}
    model_kwargs["attention_mask"] = attention_mask
    return prepare(inputs["input_ids"], model_kwargs)


def bucketed_cache_length(prompt_length: int, max_new_tokens: int, length_bucket: int) -> int:
    """`prompt_length + max_new_tokens` rounded up to a multiple of `length_bucket` (1: no rounding)."""
    if prompt_length < 1 or max_new_tokens < 1 or length_bucket < 1:
        raise ValueError(f"prompt_length {prompt_length}, max_new_tokens {max_new_tokens} and "
                         f"length_bucket {length_bucket} must all be at least 1")
    needed = prompt_length + max_new_tokens
    return -(-needed // length_bucket) * length_bucket


def _mask_values(text_config: Any, dtype: torch.dtype) -> tuple[torch.dtype, Any, Any]:
    """The step mask's dtype and its 'attend' / 'masked' values: boolean for SDPA, additive for eager."""
    if getattr(text_config, "_attn_implementation", None) == "sdpa":
        return torch.bool, True, False
    return dtype, 0.0, torch.finfo(dtype).min


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The text decoder (`model.model.language_model`; `model.model.text_model` in Idefics3 / SmolVLM;
    `model.model` for a causal LM) and `lm_head`."""
    inner = getattr(model, "model", None)
    decoder = getattr(inner, "language_model", None) or getattr(inner, "text_model", None) or inner
    head = getattr(model, "lm_head", None)
    if decoder is None or head is None or not hasattr(decoder, "layers"):
        raise FastDecodeError(f"{type(model).__name__}: expected `model.model.language_model` (or `text_model`, "
                              "or `model.model`) "
                              "with decoder `layers` and `model.lm_head`")
    return decoder, head


def _cache_keyword(module: Any) -> str:
    """`cache` (transformers >= 5.2x) or `past_key_values` (older), whichever `forward` names."""
    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class _Shape:
    """Everything kept for one (batch size, cache length): the cache, the step's static buffers, the graph."""

    batch_size: int
    cache_length: int
    cache: Any
    tokens: torch.Tensor            # [B, 1] the token the next step consumes
    positions: torch.Tensor         # [B, 1] its position id; [C, B, 1] for M-RoPE (generate's channels)
    write_index: torch.Tensor       # [1] the cache column the next step writes (= the cache's own counter)
    step_index: torch.Tensor        # [1] the output column the next step fills
    mask: torch.Tensor              # [B, 1, 1, cache_length]: bool (SDPA) or additive (eager), see _mask_values
    finished: torch.Tensor          # [B] bool: the row has emitted EOS
    lengths: torch.Tensor           # [B] tokens up to and including EOS (max_new_tokens while unfinished)
    all_finished: torch.Tensor      # [] bool
    output: torch.Tensor            # [B, cache_length] new tokens (only the first max_new_tokens are used)
    eos_ids: torch.Tensor           # [E]
    pad: torch.Tensor               # [] the pad token id
    graph: Any = None
    capture_seconds: float | None = None
    uses: int = 0                   # batches decoded with this shape (see DEFAULT_CAPTURE_AFTER_USES)
    # The prefilled state that `_arm` loads (kept to restore it after the warm-up runs of a capture).
    armed: dict[str, Any] = field(default_factory=dict)


class GreedyDecoder:
    """Greedy decoding for one model (module docstring); reuse one object so shapes reuse their graphs.

    `generate(inputs, max_new_tokens)` returns the new token ids `[B, columns]`, exactly
    `model.generate(**inputs, max_new_tokens=..., do_sample=False, num_beams=1, eos_token_id=...,
    pad_token_id=...)[:, input_len:]` up to floating-point ties. `use_cuda_graph` needs the model on a
    CUDA device; on CPU, or with False, the same step runs eagerly (still without host syncs).
    `stats` holds, per shape, the capture time; `last_timings()` the last call's prefill/decode time.
    """

    def __init__(self, model: Any, *, eos_token_id: int | Sequence[int] | None, pad_token_id: int,
                 use_cuda_graph: bool, length_bucket: int = DEFAULT_LENGTH_BUCKET,
                 max_shapes: int = DEFAULT_MAX_SHAPES, warmup_steps: int = DEFAULT_WARMUP_STEPS,
                 capture_after_uses: int = DEFAULT_CAPTURE_AFTER_USES, record_timings: bool = False) -> None:
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be at least 1, got {max_shapes}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is required (the token written after a row's EOS)")
        self.model = model
        self.decoder, self.lm_head = _decoder_and_head(model)
        self.device = self.lm_head.weight.device
        if use_cuda_graph and self.device.type != "cuda":
            raise FastDecodeError(f"use_cuda_graph needs the model on a CUDA device; it is on {self.device}: "
                                  "pass use_cuda_graph=False")
        self.use_cuda_graph = use_cuda_graph
        if eos_token_id is None:
            eos_ids: list[int] = []
        elif isinstance(eos_token_id, int):
            eos_ids = [eos_token_id]
        else:
            eos_ids = [int(token) for token in eos_token_id]
        self.eos_token_ids = eos_ids
        self.pad_token_id = int(pad_token_id)
        self.length_bucket = length_bucket
        self.max_shapes = max_shapes
        self.warmup_steps = warmup_steps
        self.capture_after_uses = max(1, capture_after_uses)
        self.record_timings = record_timings
        self._text_config = self.decoder.config
        self._packs_gqa = getattr(self._text_config, "_attn_implementation", None) == "sdpa"
        self._mask_dtype, self._attend, self._blocked = _mask_values(self._text_config, self.lm_head.weight.dtype)
        if self._packs_gqa:
            _register_decode_attention()
        self._decoder_cache_keyword = _cache_keyword(self.decoder)
        self._model_cache_keyword = _cache_keyword(model)
        self._shapes: OrderedDict[tuple[int, int], _Shape] = OrderedDict()
        self._timing_events: tuple[Any, ...] | None = None
        self._timing_walls: tuple[float, float, float] | None = None
        self._last_steps = 0
        # Two pinned flags + events for the deferred stop check: one posted, one being read.
        self._free_slots: deque[tuple[torch.Tensor, Any]] = deque()
        self._posted_slots: deque[tuple[torch.Tensor, Any]] = deque()
        if self.device.type == "cuda":
            self._free_slots.extend((torch.zeros((), dtype=torch.bool, pin_memory=True), torch.cuda.Event())
                                    for _ in range(2))

    # -- public -------------------------------------------------------------------------------------

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The (batch size, cache length) shapes kept now, least recently used first."""
        return list(self._shapes)

    def release(self) -> None:
        """Drop every kept shape (caches, buffers, graphs): the memory goes back to the allocator."""
        self._shapes.clear()

    @property
    def stats(self) -> dict[str, Any]:
        """Per kept shape ("<batch>x<cache length>"): its capture time in seconds (None without a graph)."""
        return {f"{b}x{length}": {"capture_seconds": shape.capture_seconds} for (b, length), shape
                in self._shapes.items()}

    def last_timings(self) -> dict[str, float]:
        """The last `generate`'s prefill (vision + language prompt) and decode time in ms, and its decode steps.

        CUDA events on a GPU (this synchronises), wall clock on CPU; needs `record_timings=True`. A call
        that captures a new shape counts the capture in its decode time.
        """
        if self._timing_events is not None:
            start, prefilled, done = self._timing_events
            done.synchronize()
            prefill_ms, decode_ms = start.elapsed_time(prefilled), prefilled.elapsed_time(done)
        elif self._timing_walls is not None:
            start, prefilled, done = self._timing_walls
            prefill_ms, decode_ms = (prefilled - start) * 1000, (done - prefilled) * 1000
        else:
            raise RuntimeError("no timings: construct GreedyDecoder(record_timings=True) and call generate first")
        return {"prefill_ms": prefill_ms, "decode_ms": decode_ms, "decode_steps": self._last_steps}

    @torch.inference_mode()
    def generate(self, inputs: Mapping[str, torch.Tensor] | Any, max_new_tokens: int) -> torch.Tensor:
        """New token ids `[B, columns]` of greedy decoding (module docstring), on the model's device.

        `inputs` is the model's keyword arguments, or a prompt that prefills the cache itself (an object
        with `batch_size`, `prompt_length`, `attention_mask` and `prefill(decoder, cache)` returning the
        first tokens and next positions: `launcher.prefix_sharing.SharedPrompt`)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if isinstance(inputs, Mapping):
            input_ids = inputs["input_ids"]
            batch_size, prompt_length = int(input_ids.shape[0]), int(input_ids.shape[1])
            attention_mask = inputs.get("attention_mask")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
        else:
            batch_size, prompt_length, attention_mask = inputs.batch_size, inputs.prompt_length, inputs.attention_mask
        cache_length = bucketed_cache_length(prompt_length, max_new_tokens, self.length_bucket)
        self._mark_time(0)
        if isinstance(inputs, Mapping):
            position_ids = inputs.get("position_ids")
            if position_ids is None:
                position_ids = generation_position_ids(self.model, inputs, attention_mask)
            shape = self._shape(batch_size, cache_length, tuple(position_ids.shape[:-2]))
            first_tokens, start_positions = self._prefill(shape, inputs, attention_mask, position_ids)
        else:   # 1-D positions: prefix sharing serves only such models (prefix_sharing.unsupported_reason)
            shape = self._shape(batch_size, cache_length)
            first_tokens, start_positions = inputs.prefill(self, shape.cache)
        shape.armed = {"first_tokens": first_tokens, "start_positions": start_positions,
                       "prompt_mask": attention_mask.to(self.device, torch.bool), "prompt_length": prompt_length,
                       "max_new_tokens": max_new_tokens}
        self._arm(shape)
        self._mark_time(1)
        decode_steps = max_new_tokens - 1
        shape.uses += 1
        if decode_steps and self.use_cuda_graph and shape.graph is None and shape.uses >= self.capture_after_uses:
            self._capture(shape)
        steps = self._decode(shape, decode_steps)
        self._mark_time(2)
        self._last_steps = steps
        columns = int(shape.lengths.max())       # the one host sync of a call
        return shape.output[:, :columns].clone()

    # -- shapes -------------------------------------------------------------------------------------

    def _shape(self, batch_size: int, cache_length: int, position_channels: tuple[int, ...] = ()) -> _Shape:
        key = (batch_size, cache_length)
        if key in self._shapes:
            self._shapes.move_to_end(key)
            shape = self._shapes[key]
            shape.cache.reset()
            return shape
        while len(self._shapes) >= self.max_shapes:
            self._shapes.popitem(last=False)     # drops the graph, its memory pool and the cache
        from transformers import StaticCache

        device = self.device
        shape = _Shape(
            batch_size=batch_size, cache_length=cache_length,
            cache=StaticCache(config=self.model.config, max_cache_len=cache_length),
            tokens=torch.zeros((batch_size, 1), dtype=torch.long, device=device),
            positions=torch.zeros((*position_channels, batch_size, 1), dtype=torch.long, device=device),
            write_index=torch.zeros((1,), dtype=torch.long, device=device),
            step_index=torch.zeros((1,), dtype=torch.long, device=device),
            mask=torch.zeros((batch_size, 1, 1, cache_length), dtype=self._mask_dtype, device=device),
            finished=torch.zeros((batch_size,), dtype=torch.bool, device=device),
            lengths=torch.zeros((batch_size,), dtype=torch.long, device=device),
            all_finished=torch.zeros((), dtype=torch.bool, device=device),
            output=torch.zeros((batch_size, cache_length), dtype=torch.long, device=device),
            eos_ids=torch.tensor(self.eos_token_ids, dtype=torch.long, device=device),
            pad=torch.tensor(self.pad_token_id, dtype=torch.long, device=device))
        self._shapes[key] = shape
        return shape

    # -- prefill, arm, step -------------------------------------------------------------------------

    def _prefill(self, shape: _Shape, inputs: Mapping[str, torch.Tensor], attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the full model over the prompt into the static cache; the first tokens and next positions
        (`[B, 1]`, or `[C, B, 1]` for M-RoPE: each channel continues from the prompt's last position, as
        generate extends `position_ids` by one per step)."""
        model_inputs = {key: value for key, value in inputs.items() if key not in ("attention_mask", "position_ids")}
        # generate drops an all-ones mask (no padding): SDPA then runs its causal path over the prompt only.
        prefill_mask = None if bool((attention_mask == 1).all()) else attention_mask
        output = self.model(**model_inputs, attention_mask=prefill_mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=1, return_dict=True,
                            **{self._model_cache_keyword: shape.cache})
        first_tokens = output.logits[:, -1, :].argmax(-1).to(self.device)
        start_positions = position_ids[..., -1:].to(self.device) + 1
        return first_tokens, start_positions

    def _arm(self, shape: _Shape) -> None:
        """Load the prefilled state into the static buffers (and the cache's write counters)."""
        armed = shape.armed
        prompt_length = armed["prompt_length"]
        first_tokens = armed["first_tokens"]
        shape.tokens.copy_(first_tokens[:, None])
        shape.positions.copy_(armed["start_positions"])
        shape.write_index.fill_(prompt_length)
        shape.step_index.fill_(1)
        shape.mask.fill_(self._blocked)
        shape.mask[:, 0, 0, :prompt_length].masked_fill_(armed["prompt_mask"], self._attend)
        shape.output.fill_(self.pad_token_id)
        shape.output[:, 0].copy_(first_tokens)
        shape.finished.copy_(self._is_eos(shape, first_tokens))
        shape.lengths.copy_(torch.where(shape.finished, 1, armed["max_new_tokens"]))
        shape.all_finished.copy_(shape.finished.all())
        for layer in shape.cache.layers:
            counter = getattr(layer, "cumulative_length", None)
            if not isinstance(counter, torch.Tensor):
                raise FastDecodeError(f"cache layer {type(layer).__name__} has no device-side write counter "
                                      "(`cumulative_length`): this transformers version's StaticCache is unsupported")
            counter.fill_(prompt_length)

    @staticmethod
    def _is_eos(shape: _Shape, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens[:, None] == shape.eos_ids[None, :]).any(-1)

    def _step(self, shape: _Shape) -> None:
        """One decode step, in place on the static buffers; no host reads (it is what the graph records)."""
        shape.mask.index_fill_(3, shape.write_index, self._attend)
        with self._decode_attention():
            hidden = self.decoder(input_ids=shape.tokens, attention_mask=shape.mask, position_ids=shape.positions,
                                  use_cache=True, return_dict=True,
                                  **{self._decoder_cache_keyword: shape.cache}).last_hidden_state
        chosen = self.lm_head(hidden[:, -1, :]).argmax(-1)
        chosen = torch.where(shape.finished, shape.pad, chosen)
        shape.output.index_copy_(1, shape.step_index, chosen[:, None])
        shape.tokens.copy_(chosen[:, None])
        newly_finished = self._is_eos(shape, chosen) & ~shape.finished
        shape.lengths.copy_(torch.where(newly_finished, shape.step_index + 1, shape.lengths))
        shape.finished.logical_or_(newly_finished)
        shape.all_finished.copy_(shape.finished.all())
        shape.positions.add_(1)
        shape.write_index.add_(1)
        shape.step_index.add_(1)

    @contextmanager
    def _decode_attention(self) -> Iterator[None]:
        """Select `decode_sdpa_attention` on the text config for the step's call only (SDPA models)."""
        if not self._packs_gqa:
            yield
            return
        original = self._text_config._attn_implementation
        self._text_config._attn_implementation = DECODE_ATTENTION
        try:
            yield
        finally:
            self._text_config._attn_implementation = original

    # -- graph --------------------------------------------------------------------------------------

    def _capture(self, shape: _Shape) -> None:
        """Warm the step up on a side stream, capture it, and restore the prefilled state."""
        begun = time.perf_counter()
        try:
            side_stream = torch.cuda.Stream(device=self.device)
            side_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side_stream):
                for _ in range(self.warmup_steps):
                    self._arm(shape)
                    self._step(shape)
            torch.cuda.current_stream(self.device).wait_stream(side_stream)
            self._arm(shape)
            graph = torch.cuda.CUDAGraph()
            # "thread_local": the thread joining the next batch (runner.JoinedBatches) may allocate pinned
            # memory meanwhile, which the default "global" mode would count as an error of this capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._step(shape)
        except Exception as error:
            raise FastDecodeError(f"CUDA graph capture of the decode step failed for batch {shape.batch_size}, "
                                  f"cache length {shape.cache_length}: {type(error).__name__}: {error}. "
                                  "Decode with use_cuda_graph=False or with model.generate.") from error
        # Capture records without running: the buffers still hold the prefilled state, but reload it anyway
        # (the warm-up ran on another stream).
        self._arm(shape)
        torch.cuda.synchronize(self.device)
        shape.graph = graph
        shape.capture_seconds = round(time.perf_counter() - begun, 3)

    # -- decode loop --------------------------------------------------------------------------------

    def _decode(self, shape: _Shape, decode_steps: int) -> int:
        """Run up to `decode_steps` steps, stopping one step after the device reports every row finished."""
        if decode_steps == 0:
            return 0
        deferred = self.device.type == "cuda"
        while self._posted_slots:                # left over by an interrupted call
            self._free_slots.append(self._posted_slots.popleft())
        if deferred:
            self._post_stop_flag(shape)
        steps = 0
        for _ in range(decode_steps):
            if shape.graph is not None:
                shape.graph.replay()
            else:
                self._step(shape)
            steps += 1
            if deferred:
                self._post_stop_flag(shape)
                if self._read_stop_flag():
                    break
            elif bool(shape.all_finished):
                break
        if deferred:
            self._read_stop_flag()               # the last posted flag: leave both slots free
        return steps

    def _post_stop_flag(self, shape: _Shape) -> None:
        """Copy the 'all finished' flag to pinned host memory without waiting; read it one step later."""
        flag, event = self._free_slots.popleft()
        flag.copy_(shape.all_finished, non_blocking=True)
        event.record()
        self._posted_slots.append((flag, event))

    def _read_stop_flag(self) -> bool:
        """The oldest posted flag (the step before the latest: done by the time the latest is queued)."""
        flag, event = self._posted_slots.popleft()
        event.synchronize()
        finished = bool(flag)
        self._free_slots.append((flag, event))
        return finished

    def _mark_time(self, index: int) -> None:
        if not self.record_timings:
            return
        if self.device.type == "cuda":
            if index == 0:
                self._timing_events = tuple(torch.cuda.Event(enable_timing=True) for _ in range(3))
            self._timing_events[index].record()
        else:
            now = time.perf_counter()
            walls = list(self._timing_walls or (now, now, now))
            walls[index] = now
            self._timing_walls = tuple(walls)


def greedy_generate(model: Any, inputs: Mapping[str, torch.Tensor], max_new_tokens: int,
                    eos_token_id: int | list[int] | None, pad_token_id: int, use_cuda_graph: bool) -> torch.Tensor:
    """One batch through a fresh `GreedyDecoder`: the new token ids `[B, columns]` (module docstring).

    Each call captures again; hold a `GreedyDecoder` to reuse graphs across batches.
    """
    decoder = GreedyDecoder(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                            use_cuda_graph=use_cuda_graph, capture_after_uses=1)
    return decoder.generate(inputs, max_new_tokens)
