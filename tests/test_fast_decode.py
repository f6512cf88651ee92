"""launcher.fast_decode: greedy decoding through one static decode step gives generate's tokens exactly.

Every comparison runs on CPU in float32 against `model.generate(..., do_sample=False, num_beams=1)[:, input_len:]`,
the same tensor, column count included (generate stops when every row has emitted EOS). The step runs
eagerly here; on a GPU the same step function is what the CUDA graph records (bench/decode_graph.py).
Models: the trained demo model (demo/checkpoint: answers one word, then EOS), the tiny random native
InternVL of `native_checkpoint` (sharp logits, long answers without EOS) and tiny random Qwen2 / Llama
text models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from launcher.fast_decode import (DECODE_ATTENTION, FastDecodeError, GreedyDecoder, bucketed_cache_length,
                                  decode_sdpa_attention, greedy_generate, prompt_position_ids, unsupported_reason)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "demo" / "checkpoint"
pytestmark = pytest.mark.timeout(120)


# -- fixtures ----------------------------------------------------------------------------------------

class VisionChat:
    """A native InternVL checkpoint with its tokenizer and image processor; builds left-padded batches."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import AutoModelForImageTextToText

        from demo.train_demo_model import Batcher

        torch.manual_seed(0)
        self.model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.batcher = Batcher(checkpoint)
        self.tokenizer = self.batcher.tokenizer
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id

    def batch(self, questions: Sequence[str], image_indices: Sequence[int]) -> dict[str, torch.Tensor]:
        from demo.train_demo_model import chat_text, expand_image_placeholder
        from eval_scripts.synthetic import make_item

        texts = [expand_image_placeholder(chat_text(self.tokenizer, question), self.batcher.image_seq_length)
                 for question in questions]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True)
        images = [make_item(1234, "test", index).image for index in image_indices]
        pixel_values = self.batcher.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "pixel_values": pixel_values}


@pytest.fixture(scope="module")
def demo() -> VisionChat:
    if not (DEMO_CHECKPOINT / "config.json").is_file():
        pytest.skip("demo/checkpoint missing")
    return VisionChat(DEMO_CHECKPOINT)


@pytest.fixture(scope="module")
def tiny(native_checkpoint: Path) -> VisionChat:
    return VisionChat(native_checkpoint)


def demo_questions(count: int) -> list[str]:
    from eval_scripts.synthetic import PROMPT_SUFFIX, make_item

    return [make_item(1234, "test", index).question + PROMPT_SUFFIX for index in range(count)]


# Prompts of 1 to about 45 words: left padding from 0 to 44 tokens.
TINY_QUESTIONS = [
    "red",
    "what colour is the circle on the left",
    " ".join(["how many red squares and blue circles are there in the top left of the image"] * 3),
    "is the star above the line",
]


def generate_reference(model: Any, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                       eos_token_id: int | list[int] | None, pad_token_id: int) -> torch.Tensor:
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    return output[:, inputs["input_ids"].shape[1]:]


def assert_same_tokens(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape, (ours.tolist(), reference.tolist())
    assert torch.equal(ours.cpu(), reference.cpu()), (ours.tolist(), reference.tolist())


def first_step_of(row: list[int], tokens: set[int]) -> int | None:
    return next((step for step, token in enumerate(row) if token in tokens), None)


# -- equality with generate ----------------------------------------------------------------------------

@pytest.mark.parametrize("length_bucket", [1, 64])
def test_left_padded_prompts_of_very_different_lengths_with_images_match_generate(tiny, length_bucket):
    inputs = tiny.batch(TINY_QUESTIONS, image_indices=[0, 1, 2, 3])
    prompt_lengths = inputs["attention_mask"].sum(-1)
    assert int(prompt_lengths.max() - prompt_lengths.min()) >= 30      # really different paddings
    assert "pixel_values" in inputs
    reference = generate_reference(tiny.model, inputs, 8, tiny.eos_id, tiny.pad_id)
    decoder = GreedyDecoder(tiny.model, eos_token_id=tiny.eos_id, pad_token_id=tiny.pad_id, use_cuda_graph=False,
                            length_bucket=length_bucket)
    assert_same_tokens(decoder.generate(inputs, 8), reference)


def test_the_images_change_the_tokens_so_they_reach_the_decoder(demo):
    questions = demo_questions(6)
    with_images = demo.batch(questions, image_indices=range(6))
    other_images = demo.batch(questions, image_indices=[5, 4, 3, 2, 1, 0])
    ours = greedy_generate(demo.model, with_images, 4, demo.eos_id, demo.pad_id, use_cuda_graph=False)
    assert_same_tokens(ours, generate_reference(demo.model, with_images, 4, demo.eos_id, demo.pad_id))
    swapped = greedy_generate(demo.model, other_images, 4, demo.eos_id, demo.pad_id, use_cuda_graph=False)
    assert not torch.equal(ours, swapped)


def test_the_demo_model_answers_then_stops_with_generates_fewer_columns(demo):
    inputs = demo.batch(demo_questions(8), image_indices=range(8))
    reference = generate_reference(demo.model, inputs, 6, demo.eos_id, demo.pad_id)
    assert reference.shape[1] < 6                      # generate stopped early: every row said EOS
    assert all(demo.eos_id in row for row in reference.tolist())
    assert_same_tokens(greedy_generate(demo.model, inputs, 6, demo.eos_id, demo.pad_id, use_cuda_graph=False),
                       reference)


def test_rows_reaching_eos_at_different_steps_get_pad_after_it_as_generate(tiny):
    inputs = tiny.batch(TINY_QUESTIONS, image_indices=[0, 1, 2, 3])
    free_running = generate_reference(tiny.model, inputs, 10, None, tiny.pad_id).tolist()
    # End-of-sequence = the tokens rows 0 and 2 produce at steps 1 and 4 (other rows may meet them too).
    eos_ids = [free_running[0][1], free_running[2][4]]
    reference = generate_reference(tiny.model, inputs, 10, eos_ids, tiny.pad_id)
    steps = [first_step_of(row, set(eos_ids)) for row in reference.tolist()]
    assert len({step for step in steps}) >= 2, steps          # the rows stop at different steps
    assert any(step is not None and step + 1 < reference.shape[1] for step in steps)  # padding follows an EOS
    ours = greedy_generate(tiny.model, inputs, 10, eos_ids, tiny.pad_id, use_cuda_graph=False)
    assert_same_tokens(ours, reference)


def test_every_row_stopping_at_the_first_token_gives_one_column(tiny):
    inputs = tiny.batch(TINY_QUESTIONS, image_indices=[0, 1, 2, 3])
    first_tokens = generate_reference(tiny.model, inputs, 1, None, tiny.pad_id)[:, 0].tolist()
    reference = generate_reference(tiny.model, inputs, 6, first_tokens, tiny.pad_id)
    assert reference.shape[1] == 1
    assert_same_tokens(greedy_generate(tiny.model, inputs, 6, first_tokens, tiny.pad_id, use_cuda_graph=False),
                       reference)


def test_a_batch_of_one_matches_generate(tiny, demo):
    for chat, question in ((tiny, TINY_QUESTIONS[2]), (demo, demo_questions(1)[0])):
        inputs = chat.batch([question], image_indices=[3])
        assert int(inputs["attention_mask"].min()) == 1          # no padding: generate drops the mask
        reference = generate_reference(chat.model, inputs, 7, chat.eos_id, chat.pad_id)
        assert_same_tokens(greedy_generate(chat.model, inputs, 7, chat.eos_id, chat.pad_id, use_cuda_graph=False),
                           reference)


def test_one_new_token_is_the_prefills_argmax(tiny):
    inputs = tiny.batch(TINY_QUESTIONS, image_indices=[0, 1, 2, 3])
    decoder = GreedyDecoder(tiny.model, eos_token_id=tiny.eos_id, pad_token_id=tiny.pad_id, use_cuda_graph=False,
                            record_timings=True)
    ours = decoder.generate(inputs, 1)
    assert_same_tokens(ours, generate_reference(tiny.model, inputs, 1, tiny.eos_id, tiny.pad_id))
    assert decoder.last_timings()["decode_steps"] == 0


def test_one_decoder_serves_consecutive_batches_of_different_shapes(tiny, demo):
    """Shapes (4 rows), (2 rows), then (4 rows) again with other prompts: the reused cache is reset."""
    decoder = GreedyDecoder(tiny.model, eos_token_id=tiny.eos_id, pad_token_id=tiny.pad_id, use_cuda_graph=False,
                            length_bucket=16)
    batches = [tiny.batch(TINY_QUESTIONS, image_indices=[0, 1, 2, 3]),
               tiny.batch(TINY_QUESTIONS[1:3], image_indices=[4, 5]),
               tiny.batch(list(reversed(TINY_QUESTIONS)), image_indices=[6, 7, 8, 9])]
    for inputs in batches:
        assert_same_tokens(decoder.generate(inputs, 9),
                           generate_reference(tiny.model, inputs, 9, tiny.eos_id, tiny.pad_id))
    assert [batch for batch, _ in decoder.shapes] == [2, 4]       # least recently used first


def test_a_prompt_shorter_than_the_last_in_the_same_bucket_sees_no_stale_cache(demo):
    decoder = GreedyDecoder(demo.model, eos_token_id=demo.eos_id, pad_token_id=demo.pad_id, use_cuda_graph=False,
                            length_bucket=64)
    questions = demo_questions(4)
    longer = demo.batch([question + " please" * 6 for question in questions], image_indices=range(4))
    shorter = demo.batch(questions, image_indices=[3, 2, 1, 0])
    assert longer["input_ids"].shape[1] > shorter["input_ids"].shape[1]
    for inputs in (longer, shorter):
        assert_same_tokens(decoder.generate(inputs, 4),
                           generate_reference(demo.model, inputs, 4, demo.eos_id, demo.pad_id))
    assert len(decoder.shapes) == 1                               # one bucket served both


def test_shapes_past_max_shapes_evict_the_least_recently_used(demo):
    decoder = GreedyDecoder(demo.model, eos_token_id=demo.eos_id, pad_token_id=demo.pad_id, use_cuda_graph=False,
                            max_shapes=2)
    questions = demo_questions(3)
    for rows in (1, 2, 1, 3):
        decoder.generate(demo.batch(questions[:rows], image_indices=range(rows)), 2)
    assert [batch for batch, _ in decoder.shapes] == [1, 3]


@pytest.mark.parametrize("architecture,attention", [("qwen2", "sdpa"), ("llama", "sdpa"), ("qwen2", "eager")])
def test_text_only_causal_lms_match_generate(architecture, attention):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                 "llama": (LlamaConfig, LlamaForCausalLM)}[architecture]
    config = config_class(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          initializer_range=0.2, attn_implementation=attention)
    torch.manual_seed(1)
    model = model_class(config).eval()
    generator = torch.Generator().manual_seed(2)
    lengths = [3, 17, 9, 30]
    input_ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, -length:] = torch.randint(1, 97, (length,), generator=generator)
        attention_mask[row, -length:] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    free_running = generate_reference(model, inputs, 12, None, 0).tolist()
    eos_id = free_running[1][5]
    reference = generate_reference(model, inputs, 12, eos_id, 0)
    assert_same_tokens(greedy_generate(model, inputs, 12, eos_id, 0, use_cuda_graph=False), reference)


# -- the step's attention ---------------------------------------------------------------------------------

def test_packed_gqa_attention_equals_transformers_sdpa_for_one_masked_token():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attention(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(5, 6, 1, 16, generator=generator)
    key, value = torch.randn(5, 2, 40, 16, generator=generator), torch.randn(5, 2, 40, 16, generator=generator)
    mask = torch.rand(5, 1, 1, 40, generator=generator) > 0.3
    mask[:, :, :, 0] = True
    ours, _ = decode_sdpa_attention(Attention(), query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Attention(), query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (5, 1, 6, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_step_uses_packed_attention_and_restores_the_models_setting(demo, monkeypatch):
    from transformers import AttentionInterface

    calls = []
    registered = AttentionInterface._global_mapping.get(DECODE_ATTENTION, decode_sdpa_attention)

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return registered(*args, **kwargs)

    decoder = GreedyDecoder(demo.model, eos_token_id=None, pad_token_id=demo.pad_id, use_cuda_graph=False)
    monkeypatch.setitem(AttentionInterface._global_mapping, DECODE_ATTENTION, counting)
    decoder.generate(demo.batch(demo_questions(2), image_indices=range(2)), 3)
    text_config = demo.model.config.get_text_config(decoder=True)
    assert len(calls) == 2 * text_config.num_hidden_layers               # 2 decode steps, every layer
    assert all(shape[2] == 1 for shape in calls)                         # one query token: never the prefill
    assert text_config._attn_implementation == "sdpa"


# -- contracts -------------------------------------------------------------------------------------------

def test_without_eos_every_row_runs_to_max_new_tokens(demo):
    inputs = demo.batch(demo_questions(3), image_indices=range(3))
    ours = greedy_generate(demo.model, inputs, 5, None, demo.pad_id, use_cuda_graph=False)
    assert ours.shape == (3, 5)
    assert (ours[:, 1] == demo.eos_id).all()             # the demo model's EOS is just a token now


def test_cuda_graph_on_a_cpu_model_is_refused_with_the_fix(demo):
    with pytest.raises(FastDecodeError, match="use_cuda_graph=False"):
        GreedyDecoder(demo.model, eos_token_id=demo.eos_id, pad_token_id=demo.pad_id, use_cuda_graph=True)


def test_supported_models_have_no_reason_and_others_name_theirs(demo):
    assert unsupported_reason(demo.model) is None
    generation_config = demo.model.generation_config
    generation_config.repetition_penalty = 1.3
    try:
        assert "repetition_penalty" in unsupported_reason(demo.model)
    finally:
        generation_config.repetition_penalty = None
    text_config = demo.model.config.get_text_config(decoder=True)
    implementation = text_config._attn_implementation
    text_config._attn_implementation = "flash_attention_2"
    try:
        assert "flash_attention_2" in unsupported_reason(demo.model)
    finally:
        text_config._attn_implementation = implementation
    assert "lm_head" in unsupported_reason(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("prompt_length,max_new_tokens,bucket,expected", [
    (40, 16, 64, 64), (48, 16, 64, 64), (49, 16, 64, 128), (300, 16, 64, 320), (5, 3, 1, 8), (1, 1, 8, 8),
])
def test_cache_length_is_prompt_plus_new_tokens_rounded_up_to_the_bucket(prompt_length, max_new_tokens, bucket,
                                                                          expected):
    assert bucketed_cache_length(prompt_length, max_new_tokens, bucket) == expected


def test_cache_length_refuses_empty_prompts():
    with pytest.raises(ValueError, match="prompt_length 0"):
        bucketed_cache_length(0, 4, 64)


def test_position_ids_count_real_tokens_and_are_zero_on_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert prompt_position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


# -- on a GPU (skipped here): the captured graph replays the same step ------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_graph_replay_matches_generate_across_shapes_and_batches(tiny, demo):
    """float32 on the GPU: graphs captured per shape, reused by later batches, give generate's tokens."""
    for chat, questions in ((tiny, TINY_QUESTIONS), (demo, demo_questions(4))):
        model = chat.model.to("cuda")
        try:
            free_running = generate_reference(model, _to_cuda(chat.batch(questions, range(4))), 8, None,
                                              chat.pad_id).tolist()
            eos_ids = [chat.eos_id, free_running[0][2]]             # rows stop at different steps
            decoder = GreedyDecoder(model, eos_token_id=eos_ids, pad_token_id=chat.pad_id, use_cuda_graph=True,
                                    length_bucket=16, capture_after_uses=1)
            batches = [chat.batch(questions, range(4)), chat.batch(questions[:2], [5, 6]),
                       chat.batch(list(reversed(questions)), [7, 8, 9, 10]), chat.batch(questions[:1], [3])]
            for inputs in map(_to_cuda, batches):
                reference = generate_reference(model, inputs, 8, eos_ids, chat.pad_id)
                assert_same_tokens(decoder.generate(inputs, 8), reference)
            assert all(value["capture_seconds"] is not None for value in decoder.stats.values())
            assert len(decoder.stats) >= 3
        finally:
            chat.model.to("cpu")


def _to_cuda(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to("cuda") for key, value in inputs.items()}


# -- the adapters use it -----------------------------------------------------------------------------


def test_the_native_adapter_decodes_with_our_loop_and_answers_as_generate(native_checkpoint):
    """`--decode auto` (the default) runs greedy batches through one GreedyDecoder; `--decode generate`
    through transformers: the same texts. Sampling always goes to generate."""
    from PIL import Image

    from eval_scripts.base import Item
    from launcher.generation import GenerationSettings
    from launcher.loading import load_adapter
    from tests.inputs import make_args

    adapter = load_adapter(make_args(native_checkpoint))
    assert "launcher.fast_decode" in adapter.describe()["decode"]
    questions = ["what is it ?", "describe every colour you can see in the picture , please .", "count ."]
    items = [Item(id=str(i), question=q) for i, q in enumerate(questions)]
    images = [[Image.new("RGB", (40 + 30 * i, 50), (60 * i, 120, 200))] for i in range(3)]
    batch = adapter.collate(items, questions, images)
    ours = adapter.generate(batch, GenerationSettings(max_new_tokens=6))
    assert isinstance(adapter._decoder, GreedyDecoder) and adapter._decoder.shapes
    assert adapter.generate(batch, GenerationSettings(max_new_tokens=6)) == ours      # the kept shape, reused
    assert adapter.generate(batch, GenerationSettings(max_new_tokens=6, decode="generate")) == ours
    assert any(ours)
    sampled = GenerationSettings(max_new_tokens=6, temperature=1.0)
    assert not sampled.fast_greedy and not GenerationSettings(num_beams=2).fast_greedy
    assert not GenerationSettings(static_cache=True).fast_greedy


def test_out_of_memory_in_our_loop_frees_the_kept_shapes_before_the_runner_splits_the_batch(native_checkpoint):
    from PIL import Image

    from eval_scripts.base import Item
    from launcher.generation import GenerationSettings
    from launcher.loading import load_adapter
    from tests.inputs import make_args

    adapter = load_adapter(make_args(native_checkpoint))
    items = [Item(id=str(i), question=f"what is {i} ?") for i in range(2)]
    batch = adapter.collate(items, [item.question for item in items], [[Image.new("RGB", (40, 40))]] * 2)
    settings = GenerationSettings(max_new_tokens=3)
    expected = adapter.generate(batch, settings)
    decoder = adapter._decoder
    assert decoder.shapes

    def out_of_memory(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    real_prefill, decoder._prefill = decoder._prefill, out_of_memory
    with pytest.raises(torch.cuda.OutOfMemoryError):
        adapter.generate(batch, settings)
    assert decoder.shapes == [] and adapter._decoder is decoder      # freed, and still our loop
    decoder._prefill = real_prefill
    assert adapter.generate(batch, settings) == expected

