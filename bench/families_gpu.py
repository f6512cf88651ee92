"""Families beyond InternVL on one GPU: our runner against plain transformers, in the same run.

`python -m bench.families_gpu --device cuda --out bench/families_gpu.json` builds each family of `--families`
at its real shape with random weights (bf16, SDPA, transformers' own init) directly on the GPU, and runs the same synthetic items (the `realistic` set of bench/data.py: one 448-pixel
image and a 20-60 word question per item) through:

* `plain, batch 1`: what a user of plain transformers does, item by item: the family's processor,
  `processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)`
  with the image as a content entry, `model.generate(...)`; preprocessing included in the time;
* `plain generate, batched`: the same processor call over batches of conversations (left padding), made
  beforehand and already on the GPU, then `model.generate` alone: plain generate at its best;
* `ours`: `launcher.runner.run_batches` with the product's adapter (`NativeImageTextAdapter`), batches
  planned by cost, DataLoader workers, chunks joined, `--decode auto` (the fast greedy loop where the
  family's capability record allows it: Qwen2.5-VL's M-RoPE and LLaVA-OneVision are proven families);
* `ours, --decode generate`: the same with transformers' generate.

Token ids are compared, not text (the model's vocabulary is the real one; ids past our small tokenizer's
words decode to nothing): each batched mode against `plain, batch 1`. Random weights in bf16 give flat
logits, so near-ties make some sequences differ (bench/RESULTS.md has the float32 CPU equality).

Shapes: `tiny` (the test checkpoints of launcher/tiny_families.py; for a CPU check) and `real`:

| family | real shape | vision | text |
| --- | --- | --- | --- |
| qwen2_5_vl | Qwen2.5-VL-3B (3.8 B) | 32 blocks, 1280 wide, patch 14, window attention | 2048 wide, 36 layers, 16/2 heads, M-RoPE |
| llava_onevision | LLaVA-OneVision-0.5B (0.9 B) | SigLIP-so400m, 384 px, anyres_max_9 | Qwen2-0.5B: 896 wide, 24 layers, 14/2 heads |

Writes JSON (`--out`) and prints a table. Needs torch, transformers, accelerate (GPU image: torch 2.11,
transformers 5.17); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import fill_defaults, sync_device
from bench.data import BenchTask, make_set
from bench.report import print_table, write_report
from bench.throughput import RecordingAdapter, agreement, device_description, item_costs, ours
from launcher.generation import GenerationSettings

FAMILIES = ("qwen2_5_vl", "llava_onevision")

_REAL_TEXT = {
    "qwen2_5_vl": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                       rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                        "mrope_section": [16, 24, 24]}, tie_word_embeddings=True),
    "llava_onevision": dict(vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                            rope_theta=1_000_000.0, tie_word_embeddings=True),
}
_OV_PINPOINTS = [[384 * rows, 384 * cols] for rows in range(1, 7) for cols in range(1, 7)]


def _tiny_parts(family: str, folder: Path) -> tuple[Any, Any]:
    """(config, processor) of the family's test checkpoint (launcher/tiny_families.py)."""
    from transformers import AutoConfig, AutoTokenizer

    from launcher.adapters import load_processor
    from launcher.tiny_families import build_family

    path = build_family(family, folder / family)
    config = AutoConfig.from_pretrained(path)
    return config, load_processor(str(path), AutoTokenizer.from_pretrained(path), config)


def _real_parts(family: str, folder: Path) -> tuple[Any, Any]:
    """(config, processor) at the family's real shape, around the test checkpoint's tokenizer and template."""
    from launcher.adapters import VideoProcessorLeftOut, processor_without_video

    config, tiny_processor = _tiny_parts(family, folder)
    tokenizer, template = tiny_processor.tokenizer, tiny_processor.chat_template
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        real = Qwen2_5_VLConfig(
            text_config={**_REAL_TEXT[family], **ids},
            vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                           "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                           "out_hidden_size": 2048, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
            image_token_id=config.image_token_id, video_token_id=config.video_token_id,
            vision_start_token_id=config.vision_start_token_id, vision_end_token_id=config.vision_end_token_id)
        image_processor = Qwen2VLImageProcessorPil(patch_size=14, temporal_patch_size=2, merge_size=2,
                                                   min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
        processor = processor_without_video(Qwen2_5_VLProcessor)(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=VideoProcessorLeftOut(),
            chat_template=template)
        return real, processor
    if family == "llava_onevision":
        from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor, Qwen2Config, SiglipVisionConfig
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil)

        real = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                             num_attention_heads=16, image_size=384, patch_size=14),
            text_config=Qwen2Config(**_REAL_TEXT[family], **ids), image_token_index=config.image_token_index,
            video_token_index=config.video_token_index, image_grid_pinpoints=_OV_PINPOINTS,
            vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9")
        image_processor = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384},
                                                          image_grid_pinpoints=_OV_PINPOINTS)
        processor = processor_without_video(LlavaOnevisionProcessor)(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=VideoProcessorLeftOut(),
            num_image_tokens=729, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
            chat_template=template)
        return real, processor
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def build(family: str, shape: str, device: torch.device, dtype: torch.dtype, folder: Path) -> tuple[Any, Any]:
    """(model, processor): random weights at `shape` (transformers' own init, the config's initializer range),
    created directly on `device`."""
    from transformers import AutoModelForImageTextToText

    started = time.perf_counter()
    config, processor = (_tiny_parts if shape == "tiny" else _real_parts)(family, folder)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    tokenizer = processor.tokenizer
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    sync_device()
    model.bench_info = {"family": family, "shape": shape, "dtype": str(dtype).replace("torch.", ""),
                        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
                        "build_seconds": round(time.perf_counter() - started, 2)}
    return model, processor


# ------------------------------------------------------------------------------------------------
# Plain transformers


def _ids_text(rows: list[list[int]], eos: int | None) -> list[str]:
    texts = []
    for row in rows:
        if eos in row:
            row = row[:row.index(eos)]
        texts.append(" ".join(map(str, row)))
    return texts


def _conversation(prompt: str, images: Sequence[Any]) -> list[dict[str, Any]]:
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def _opened(item: Any) -> list[Any]:
    from launcher.images import open_image

    return [open_image(source, item.id) for source in item.images]


def plain_batch1(model, processor, items, prompts, indices, max_new_tokens: int) -> dict[str, Any]:
    """Item by item, preprocessing included, as plain transformers' users run it."""
    device = model.get_input_embeddings().weight.device
    predictions = {}
    sync_device()
    started = time.perf_counter()
    for index in indices:
        inputs = processor.apply_chat_template(_conversation(prompts[index], _opened(items[index])), tokenize=True,
                                               return_dict=True, add_generation_prompt=True, return_tensors="pt")
        inputs = {k: (v.to(device, model.dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        predictions[items[index].id] = _ids_text(output[:, inputs["input_ids"].shape[1]:].tolist(),
                                                 processor.tokenizer.eos_token_id)[0]
    sync_device()
    return {"seconds": time.perf_counter() - started, "items": len(predictions), "predictions": predictions}


def plain_batched(model, processor, items, prompts, batches: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    """`apply_chat_template` over batches of conversations (made beforehand, on the GPU), then generate alone."""
    device = model.get_input_embeddings().weight.device
    processor.tokenizer.padding_side = "left"
    made = []
    for batch in batches:
        conversations = [_conversation(prompts[i], _opened(items[i])) for i in batch]
        inputs = processor.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                               add_generation_prompt=True, return_tensors="pt",
                                               processor_kwargs={"padding": True})
        made.append((batch, {k: (v.to(device, model.dtype) if v.is_floating_point() else v.to(device))
                             for k, v in inputs.items()}))
    predictions = {}
    sync_device()
    started = time.perf_counter()
    for batch, inputs in made:
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        for index, text in zip(batch, _ids_text(output[:, inputs["input_ids"].shape[1]:].tolist(),
                                                processor.tokenizer.eos_token_id)):
            predictions[items[index].id] = text
    sync_device()
    return {"seconds": time.perf_counter() - started, "items": len(predictions), "predictions": predictions}


# ------------------------------------------------------------------------------------------------


def run_family(family: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from launcher.scheduler import plan_batches

    device, dtype = (torch.device("cuda:0"), torch.bfloat16) if args.device == "cuda" else \
        (torch.device("cpu"), torch.float32)
    model, processor = build(family, args.shape, device, dtype, folder)
    print(f"[families_gpu] built {model.bench_info}", flush=True)
    synthetic = make_set("realistic", args.items, 448 if args.shape != "tiny" else 56, seed=0)
    items = synthetic.items
    prompts = [BenchTask().prompt(item) for item in items]
    adapter = RecordingAdapter(model, processor, dtype=dtype)
    costs = item_costs(adapter, items, prompts)
    everything = list(range(len(items)))
    report: dict[str, Any] = {"family": family, "model": model.bench_info,
                              "capabilities": adapter.describe()["capabilities"],
                              "pixel_transfer": adapter.describe()["pixel_transfer"],
                              "mean_cost_tokens": round(sum(costs) / len(costs), 1), "rows": []}
    settings = {decode: GenerationSettings(max_new_tokens=args.max_new_tokens, decode=decode)
                for decode in ("auto", "generate")}
    # Warm-up: kernels, allocator, DataLoader fork, the fast decoder's first shapes.
    warm = everything[:min(len(items), args.batch_sizes[0])]
    ours(adapter, items, prompts, plan_batches(warm, costs, args.batch_sizes[0], 0, 1, False), settings["auto"],
         args.num_workers)
    plain_batch1(model, processor, items, prompts, everything[:2], args.max_new_tokens)

    reference = plain_batch1(model, processor, items, prompts, everything[:args.loop_items], args.max_new_tokens)
    report["rows"].append(_row("plain, batch 1 (apply_chat_template + generate)", 1, reference))
    for batch_size in args.batch_sizes:
        batches = plan_batches(everything, costs, batch_size, 0, 1, False)
        plain = plain_batched(model, processor, items, prompts, batches, args.max_new_tokens)
        report["rows"].append(_row("plain generate, batched, inputs pre-made on the device", batch_size, plain,
                                   reference["predictions"]))
        for decode in ("auto", "generate"):
            for repeat in range(args.repeats):
                run = ours(adapter, items, prompts, batches, settings[decode], args.num_workers)
                report["rows"].append(_row(f"ours, --decode {decode}", batch_size, run, reference["predictions"],
                                           {"repeat": repeat}))
    if device.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del adapter, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def _row(mode: str, batch_size: int, run: dict[str, Any], reference: dict[str, str] | None = None,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {"mode": mode, "batch_size": batch_size, "items": run["items"], "seconds": round(run["seconds"], 3),
           "items_per_s": round(run["items"] / run["seconds"], 2) if run["seconds"] > 0 else None,
           **{key: run[key] for key in ("waiting_for_data_s", "joining_chunks_s") if key in run}, **(extra or {})}
    if reference is not None:
        row["agreement_vs_plain_batch1"] = agreement(reference, run["predictions"])
    return row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shape", choices=("tiny", "real"), default=None, help="default: real on cuda, tiny on cpu")
    parser.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES))
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--loop-items", type=int, default=None, help="items of the batch-1 plain loop")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    fill_defaults(args, {"shape": "tiny" if cpu else "real", "items": 12 if cpu else 256,
                         "loop_items": 12 if cpu else 48, "batch_sizes": [4] if cpu else [64, 128],
                         "repeats": 1, "max_new_tokens": 4 if cpu else 16,
                         "num_workers": 1 if cpu else 4})
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.monotonic()
    report: dict[str, Any] = {"kind": "families_gpu", "environment": device_description(
        torch.device("cuda:0" if args.device == "cuda" else "cpu")), "shape": args.shape,
        "max_new_tokens": args.max_new_tokens, "num_workers": args.num_workers, "families": []}
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families:
            report["families"].append(run_family(family, args, Path(folder)))
    report["seconds_total"] = round(time.monotonic() - started, 1)
    report["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = []
    for entry in report["families"]:
        for row in entry["rows"]:
            agree = row.get("agreement_vs_plain_batch1") or {}
            rows.append({"family": entry["family"], **row, "exact_vs_plain_b1": agree.get("exact_sequence", ""),
                         "first_tok_vs_plain_b1": agree.get("first_token", "")})
    print_table(rows, ("family", "mode", "batch_size", "items", "seconds", "items_per_s", "exact_vs_plain_b1",
                       "first_tok_vs_plain_b1"))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
