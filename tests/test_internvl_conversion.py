"""Original InternVL folders on the native model: conversion, prompts, tokenizer, `convert`, routing, launch.py.

The folders are our own imitations (tests/original_internvl.py); their `.py` files raise when imported, so
every test here also proves that no remote code runs. The reference is a from-scratch computation of
InternVL's forward over the original tensors, greedy, float32.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launcher.errors import UserError
from tests.inputs import make_args, noise_image
from tests.original_internvl import ReferenceInternVL, build_original_folder
from tests.runs import explain, launch, manifest, predictions

PROMPTS = ["What colour is the circle?", "How many shapes are there?", "Describe the picture.",
           "Is there a red square on the left? Answer the question using a single word or phrase."]
SIZES = [(112, 56), (56, 140), (90, 90), (200, 60)]


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("original_internvl")
    return {kind: build_original_folder(root / kind, kind, seed=3) for kind in ("internlm2_6b", "qwen2_300m")}


_LOADED: dict[tuple[str, bool], object] = {}


def _adapter(folder: Path, dynamic: bool, **overrides):
    """The adapter of `folder` (loaded once per folder and tiling for this module's tests)."""
    from launcher.loading import load_adapter

    key = (str(folder), dynamic)
    if key not in _LOADED or overrides:
        _LOADED[key] = load_adapter(make_args(folder, dtype="float32", dynamic=dynamic, max_num=4, **overrides),
                                    [torch.device("cpu")])
    return _LOADED[key]


def _reference_tokens(folder: Path, adapter, max_new_tokens: int = 8) -> list[list[int]]:
    """The reference's greedy tokens for each item, from the adapter's own unpadded ids and tiles."""
    reference = ReferenceInternVL(folder)
    image_token = adapter.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    out = []
    for index, prompt in enumerate(PROMPTS):
        tiles = adapter.tile_bytes(noise_image(*SIZES[index], seed=index))
        ids = adapter.tokenizer(adapter.query(prompt, [tiles.shape[0]]))["input_ids"]
        pixels = (tiles.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(3, 1, 1)
        out.append(reference.greedy(ids, pixels, image_token, adapter.model.generation_config.eos_token_id,
                                    max_new_tokens))
    return out


def _adapter_tokens(adapter, max_new_tokens: int = 8, decode: str = "auto") -> list[list[int]]:
    from launcher.generation import GenerationSettings

    images = [[noise_image(*SIZES[i], seed=i)] for i in range(len(PROMPTS))]
    batch = adapter.collate([None] * len(PROMPTS), PROMPTS, images)
    with torch.inference_mode():
        new = adapter._new_tokens(batch.to(torch.device("cpu"), torch.float32),
                                  GenerationSettings(max_new_tokens=max_new_tokens, decode=decode))
    eos = adapter.model.generation_config.eos_token_id
    rows = []
    for row in new.tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("kind", ["internlm2_6b", "qwen2_300m"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_converted_model_predicts_the_original_layouts_tokens(originals, kind, dynamic):
    adapter = _adapter(originals[kind], dynamic)
    assert type(adapter.model).__name__ == "InternVLForConditionalGeneration"
    assert adapter.describe()["model_code"]["path"] == "converted"
    ours = _adapter_tokens(adapter)
    assert ours == _reference_tokens(originals[kind], adapter)
    assert len({tuple(row) for row in ours}) > 1          # the items differ: a real comparison
    if dynamic:
        assert adapter.tile_bytes(noise_image(*SIZES[3], seed=3)).shape[0] > 1


def test_fast_greedy_loop_and_generate_agree_on_the_converted_model(originals):
    adapter = _adapter(originals["internlm2_6b"], dynamic=True)
    assert "fast_decode" in adapter.describe()["decode"]
    assert _adapter_tokens(adapter, decode="auto") == _adapter_tokens(adapter, decode="generate")


def test_internlm2_fused_qkv_is_split_per_key_value_group():
    from launcher.internvl_conversion import converted_tensors, read_original

    config = {"architectures": ["InternVLChatModel"], "template": "internlm2-chat", "ps_version": "v2",
              "llm_config": {"architectures": ["InternLM2ForCausalLM"], "hidden_size": 8, "num_attention_heads": 4,
                             "num_key_value_heads": 2}, "vision_config": {"hidden_size": 4, "num_attention_heads": 1}}
    original = read_original(Path("x"), config)
    # rows: kv head 0 -> q0 q1 k0 v0, kv head 1 -> q2 q3 k1 v1 (head_dim 2); each row holds its label
    labels = ["q0", "q1", "k0", "v0", "q2", "q3", "k1", "v1"]
    fused = torch.tensor([[float(i)] * 8 for i, _ in enumerate(labels) for _ in range(2)])
    parts = dict(converted_tensors(original, "language_model.model.layers.0.attention.wqkv.weight", fused))
    prefix = "model.language_model.layers.0.self_attn."
    assert parts[prefix + "q_proj.weight"][::2, 0].tolist() == [0, 1, 4, 5]
    assert parts[prefix + "k_proj.weight"][::2, 0].tolist() == [2, 6]
    assert parts[prefix + "v_proj.weight"][::2, 0].tolist() == [3, 7]


def test_prompts_follow_internvls_templates():
    from launcher.internvl_templates import build_query, get_template

    internlm2 = build_query(get_template("internlm2-chat"), "S", "Q?", [2], 3)
    assert internlm2 == ("<|im_start|>system\nS<|im_end|><|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 6
                         + "</img>\nQ?<|im_end|><|im_start|>assistant\n")
    assert get_template("internvl2_5").prompt("Q", "S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")
    assert get_template("phi3-chat").prompt("Q", "") == "<|system|>\n<|end|><|user|>\nQ<|end|><|assistant|>\n"
    assert get_template("internvl2_5").stop_text == "<|im_end|>"
    two = build_query(get_template("Hermes-2"), "", "Q", [1, 1], 1)
    assert "Image-1: <img><IMG_CONTEXT></img>\nImage-2: <img><IMG_CONTEXT></img>\nQ" in two


def test_internlm2_tokenizer_splits_at_added_tokens_and_encodes_the_rest_with_sentencepiece(originals):
    import sentencepiece as spm

    from launcher.original_tokenizers import load_original_tokenizer

    folder = originals["internlm2_6b"]
    tokenizer = load_original_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    text = "<|im_start|>user\nwhat colour<img><IMG_CONTEXT></img> is the circle?<|im_end|>"
    expected = [1, tokenizer.convert_tokens_to_ids("<|im_start|>")] + sp.encode("user\nwhat colour") + [
        tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "<IMG_CONTEXT>", "</img>")] + sp.encode(
        " is the circle?") + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert tokenizer(text)["input_ids"] == expected
    assert tokenizer.decode(tokenizer(" what colour ?")["input_ids"], skip_special_tokens=True) == "what colour?"


def test_convert_command_writes_a_checkpoint_that_predicts_the_same(originals, tmp_path):
    from launcher.convert_command import main

    source = originals["internlm2_6b"]
    destination = tmp_path / "native"
    assert main([str(source), str(destination)]) == 0
    config = json.loads((destination / "config.json").read_text())
    assert config["architectures"] == ["InternVLForConditionalGeneration"] and "auto_map" not in config
    assert len(list(destination.glob("model-*.safetensors"))) == 3
    assert main([str(source), str(destination)]) == 2            # DST not empty, no --overwrite
    converted_once = _adapter(destination, dynamic=True)
    assert converted_once.describe()["model_code"]["path"] == "native"
    assert _adapter_tokens(converted_once) == _adapter_tokens(_adapter(source, dynamic=True))


def _with_llm(folder: Path, tmp_path: Path, architecture: str) -> Path:
    import shutil

    copy = tmp_path / architecture
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["llm_config"]["architectures"] = [architecture]
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_an_unconvertible_family_says_why_and_needs_trust_remote_code(originals, tmp_path):
    from launcher.loading import load_model

    folder = _with_llm(originals["qwen2_300m"], tmp_path, "InternLM3ForCausalLM")
    with pytest.raises(UserError, match=r"InternLM3ForCausalLM has no conversion.*--trust-remote-code"):
        load_model(make_args(folder), [torch.device("cpu")])
    with pytest.raises(UserError, match=r"cannot be converted.*--model-code remote"):
        load_model(make_args(folder, model_code="native"), [torch.device("cpu")])


def test_quantization_of_an_original_folder_points_to_convert(originals):
    from launcher.loading import load_model

    with pytest.raises(UserError, match=r"python -m launcher convert"):
        load_model(make_args(originals["qwen2_300m"], load_in_8bit=True), [torch.device("cpu")])


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_launch_runs_an_original_folder_converted_and_records_why(originals, tmp_path, workers):
    from eval_scripts.synthetic import generate_benchmark

    generate_benchmark(tmp_path / "data" / "synthetic", n_items=5, seed=7, split="test")
    result = launch(["--checkpoint", originals["qwen2_300m"], "--task", "synthetic_shapes", "--data-root",
                     tmp_path / "data", "--out-dir", tmp_path / "out", "--num-workers", workers, "--dynamic",
                     "--max-num", "2", "--max-new-tokens", "4"])
    assert result.returncode == 0, explain(result)
    model = manifest(tmp_path / "out")
    described = json.dumps(model)
    assert '"path": "converted"' in described and "Qwen2ForCausalLM" in described
    assert len(predictions(tmp_path / "out", "synthetic_shapes")) == 5


def test_launch_with_an_unconvertible_folder_is_one_line_and_exit_2(originals, tmp_path):
    from eval_scripts.synthetic import generate_benchmark

    generate_benchmark(tmp_path / "synthetic", n_items=2, seed=7, split="test")
    folder = _with_llm(originals["qwen2_300m"], tmp_path, "GptOssForCausalLM")
    result = launch(["--checkpoint", folder, "--task", "synthetic_shapes", "--data-root", tmp_path])
    assert result.returncode == 2, explain(result)
    assert "GptOssForCausalLM has no conversion" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_plans_the_converted_model_without_trust_remote_code(originals):
    result = launch(["--checkpoint", originals["internlm2_6b"], "--task", "synthetic_shapes", "--dry-run",
                     "--gpus-per-model", "2", "--assume-gpus", "2", "--gpu-memory-gib", "8"])
    assert result.returncode == 0, explain(result)
    assert "model.language_model.norm, lm_head" in result.stdout   # the native module names


@pytest.mark.parametrize("kind", ["internlm2_6b", "qwen2_300m"])
def test_collate_gives_the_ids_of_internvls_full_query(originals, kind):
    adapter = _adapter(originals[kind], dynamic=True)
    images = [[noise_image(*SIZES[i], seed=i)] for i in range(len(PROMPTS))] + [[]]
    prompts = PROMPTS + ["no image here"]
    batch = adapter.collate([None] * len(prompts), prompts, images)
    for index, (prompt, item_images) in enumerate(zip(prompts, images)):
        patches = [adapter.tile_bytes(image).shape[0] for image in item_images]
        expected = adapter.tokenizer(adapter.query(prompt, patches))["input_ids"]
        mask = batch.tensors["attention_mask"][index].bool()
        assert batch.tensors["input_ids"][index][mask].tolist() == expected
        assert not mask[:mask.numel() - len(expected)].any()       # padded on the left


# ----------------------------------------------------------------------------------------------
# Prefix sharing on the converted model: questions about one image share its tiles and prefill

SHARED_IMAGES = [0, 1, 0, 2, 1, 0]      # the image of each question: groups of 3, 2 and 1


def _shared_batch_args():
    from eval_scripts.base import Item

    prompts = [PROMPTS[position % len(PROMPTS)] for position in range(len(SHARED_IMAGES))]
    items = [Item(id=str(position), question=prompt, images=(f"image-{image}",))
             for position, (prompt, image) in enumerate(zip(prompts, SHARED_IMAGES))]
    images = [[noise_image(*SIZES[image], seed=image)] for image in SHARED_IMAGES]
    return items, prompts, images


@pytest.mark.parametrize("kind", ["internlm2_6b", "qwen2_300m"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_a_shared_batch_of_the_converted_model_predicts_the_plain_batchs_tokens(originals, kind, dynamic):
    from launcher import prefix_sharing
    from launcher.generation import GenerationSettings

    adapter = _adapter(originals[kind], dynamic)
    assert prefix_sharing.unsupported_reason(adapter, GenerationSettings()) is None
    items, prompts, images = _shared_batch_args()
    plain = adapter.collate(items, prompts, images)
    shared = adapter.collate_shared(items, prompts, images)
    assert prefix_sharing.is_shared(shared.tensors)
    assert shared.tensors[prefix_sharing.PREFIX_IDS].shape[0] == 3          # one prefix per image
    assert shared.tensors["pixel_values"].shape[0] < plain.tensors["pixel_values"].shape[0]
    unshared = prefix_sharing.unshared_tensors(shared.tensors, adapter.tokenizer.pad_token_id)
    assert set(unshared) == set(plain.tensors)
    for name, tensor in plain.tensors.items():
        assert torch.equal(unshared[name], tensor), name

    settings = GenerationSettings(max_new_tokens=6)
    with torch.inference_mode():
        expected = adapter._new_tokens(plain.to(torch.device("cpu"), torch.float32), settings)
        ours = adapter._new_tokens(shared.to(torch.device("cpu"), torch.float32), settings)
    assert torch.equal(ours, expected), (ours.tolist(), expected.tolist())
    assert len({tuple(row) for row in expected.tolist()}) > 2               # the rows differ: a real comparison
    # The decode path of split models: generate continues from the shared prefixes.
    with torch.inference_mode():
        by_generate = adapter._new_tokens(shared.to(torch.device("cpu"), torch.float32),
                                          GenerationSettings(max_new_tokens=6, decode="generate"))
    assert torch.equal(by_generate, expected), (by_generate.tolist(), expected.tolist())
    # No image asked about twice: the plain collate serves.
    assert adapter.collate_shared(items[:2], prompts[:2], images[:2]) is None


@pytest.mark.slow
def test_launch_shares_prefixes_of_an_original_folder_and_predicts_what_the_unshared_run_does(originals, tmp_path):
    from eval_scripts.synthetic import make_item

    (tmp_path / "images").mkdir()
    rows = []
    for position, image in enumerate([0, 1, 0, 2, 1, 0, 2, 0]):
        if not (tmp_path / "images" / f"{image}.png").exists():
            picture = make_item(99, "test", image).image
            (picture.resize((150, 60)) if image == 1 else picture).save(tmp_path / "images" / f"{image}.png")
        item = make_item(99, "test", 50 + position)
        rows.append({"question_id": position, "image": f"images/{image}.png", "question": item.question,
                     "answer": item.answer, "question_type": item.question_type})
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--checkpoint", originals["qwen2_300m"], "--task", "synthetic_shapes", "--data-root", tmp_path,
              "--data", data, "--dynamic", "--max-num", "2", "--max-new-tokens", "4"]
    alone = launch(common + ["--out-dir", tmp_path / "alone", "--no-prefix-sharing", "--num-workers", "0"])
    assert alone.returncode == 0, explain(alone)
    shared = launch(common + ["--out-dir", tmp_path / "shared", "--num-workers", "2"])
    assert shared.returncode == 0, explain(shared)
    assert predictions(tmp_path / "shared", "synthetic_shapes") == predictions(tmp_path / "alone", "synthetic_shapes")
    run = manifest(tmp_path / "shared")
    assert run["prefix_sharing"] == {"enabled": True, "reason": None}
    counts = run["tasks"]["synthetic_shapes"]["per_rank"][0]["prefix_sharing"]
    assert 0 < counts["prefixes"] < counts["items"] == 8
