"""Original InternVL folders on the fast path: converted at load vs converted once vs saved natively.

    python -m bench.convert_speed --device cuda --shapes 2b,8b --out $OUT/convert.json
    python -m bench.convert_speed --device cpu            # tiny shape: a check of this script

For each shape (bench/models.py: 2b = InternViT-300M + Qwen2.5-1.5B, 8b = InternViT-300M + Qwen2.5-7B),
one random-weight model is built on the device and written twice:

* `original/`: OUR imitation of OpenGVLab's layout (config.json with `InternVLChatModel`, an `auto_map`,
  `llm_config` / `vision_config`, template `internvl2_5`; sharded safetensors under the original names:
  `vision_model.encoder.layers.N.attn.qkv`, `ls1`, `norm1`, `mlp1.*`, `language_model.model.*`,
  `language_model.lm_head`), written by inverting our conversion's renames;
* `native/`: `save_pretrained` of the same model (the `-hf` layout), with the processor files.

Then `launcher.loading.load_adapter` runs each of: the original folder (converted at load), the output
of `python -m launcher convert original/ converted/` (converted once: a native checkpoint that our
launcher feeds as its original), and `native/` (transformers' processor path). For each: load seconds,
and items/s of generation through the product's decode path (`--decode auto`: the CUDA-graph greedy
loop on a GPU) over batches collated beforehand (preprocessing is not timed: the model path is what
differs), after two warm-up batches (the second captures the CUDA graph); and the new tokens' agreement
with the native model's. Folders are deleted once measured (at most two copies of the weights on disk).

Prints a table and writes JSON (`--out`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import fill_defaults, sync_device
from bench.report import print_table, write_report

_VISION_BACK = (("attention.projection_layer.", "attn.proj."), ("attention.q_norm.", "attn.q_norm."),
                ("attention.k_norm.", "attn.k_norm."), (".layernorm_before.", ".norm1."),
                (".layernorm_after.", ".norm2."))


def original_tensors(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """A native Qwen2-based InternVL state dict under the original InternVLChatModel names."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name.startswith("model.vision_tower."):
            rest = name[len("model.vision_tower."):].replace("encoder.layer.", "encoder.layers.")
            rest = rest.replace("embeddings.cls_token", "embeddings.class_embedding")
            rest = rest.replace("embeddings.position_embeddings", "embeddings.position_embedding")
            rest = rest.replace("embeddings.patch_embeddings.projection.", "embeddings.patch_embedding.")
            for new, old in _VISION_BACK:
                rest = rest.replace(new, old)
            if rest.endswith(("lambda_1", "lambda_2")):
                rest = rest[:-len("lambda_1")] + "ls" + rest[-1]
            for part in "qkv":
                marker = f".attention.{part}_proj."
                if marker in rest:
                    base, kind = rest.split(marker)
                    fused.setdefault(f"vision_model.{base}.attn.qkv.{kind}", {})[part] = tensor
                    break
            else:
                out["vision_model." + rest] = tensor
        elif name.startswith("model.multi_modal_projector."):
            rest = name[len("model.multi_modal_projector."):]
            for new, old in (("layer_norm.", "mlp1.0."), ("linear_1.", "mlp1.1."), ("linear_2.", "mlp1.3.")):
                if rest.startswith(new):
                    out[old + rest[len(new):]] = tensor
        elif name.startswith("model.language_model."):
            out["language_model.model." + name[len("model.language_model."):]] = tensor
        elif name == "lm_head.weight":
            out["language_model.lm_head.weight"] = tensor
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if tied or "language_model.lm_head.weight" not in out:
        # InternVL's chat models keep an untied head (its config forces tie_word_embeddings False).
        out["language_model.lm_head.weight"] = out["language_model.model.embed_tokens.weight"].clone()
    return out


def write_original_folder(model: Any, tokenizer: Any, folder: Path, shard_bytes: int = 2 << 30) -> Path:
    """`model` (native, Qwen2 text) written in our imitation of the original layout (module docstring)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    vision, text = config.vision_config, config.text_config
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    tensors = original_tensors(state, bool(getattr(config, "tie_word_embeddings", False)))
    del state
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        if size and size + tensor.numel() * tensor.element_size() > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += tensor.numel() * tensor.element_size()
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    llm = text.to_dict()
    llm.update(architectures=["Qwen2ForCausalLM"], tie_word_embeddings=False)
    image_size = int(vision.image_size[0])
    original = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internvl2_5",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "llm_config": llm,
        "vision_config": {"architectures": ["InternVisionModel"], "hidden_size": vision.hidden_size,
                          "num_hidden_layers": vision.num_hidden_layers,
                          "num_attention_heads": vision.num_attention_heads,
                          "intermediate_size": vision.intermediate_size, "qkv_bias": vision.attention_bias,
                          "qk_normalization": vision.use_qk_norm, "norm_type": vision.norm_type,
                          "layer_norm_eps": vision.layer_norm_eps, "hidden_act": vision.hidden_act,
                          "image_size": image_size, "patch_size": int(vision.patch_size[0])},
        "force_image_size": image_size, "downsample_ratio": config.downsample_ratio, "ps_version": "v2",
        "select_layer": -1, "use_thumbnail": True, "dynamic_image_size": True, "max_dynamic_patch": 12,
        "torch_dtype": str(model.dtype).replace("torch.", ""), "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(original, indent=1, ensure_ascii=False))
    tokenizer.save_pretrained(folder)
    return folder


def _timed_generation(adapter: Any, batches: list[Any], max_new_tokens: int) -> dict[str, Any]:
    from launcher.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    device = next(adapter.model.parameters()).device

    def run(batch: Any) -> list[list[int]]:
        with torch.inference_mode():
            return adapter._new_tokens(batch.to(device, adapter.dtype), settings).tolist()

    run(batches[0])                     # warm-up (and the first of the two uses before a graph capture)
    run(batches[0])
    sync_device()
    started = time.perf_counter()
    tokens = [row for batch in batches for row in run(batch)]
    sync_device()
    seconds = time.perf_counter() - started
    items = sum(len(batch) for batch in batches)
    return {"seconds": round(seconds, 3), "items": items, "items_per_s": round(items / seconds, 2), "tokens": tokens}


def measure(folder: Path, label: str, args: argparse.Namespace, synthetic: Any, prompts: list[str],
            device: torch.device) -> dict[str, Any]:
    """Load `folder` through the product's loader and time generation (module docstring)."""
    from launcher.images import open_image
    from launcher.loading import load_adapter

    sync_device()
    started = time.perf_counter()
    adapter = load_adapter(argparse.Namespace(checkpoint=str(folder), dtype=args.dtype, dynamic=False, max_num=6,
                                              auto=False, load_in_8bit=False, load_in_4bit=False), [device])
    sync_device()
    load_seconds = time.perf_counter() - started
    batches = []
    for start in range(0, len(synthetic.items), args.batch_size):
        chunk = synthetic.items[start:start + args.batch_size]
        images = [[open_image(source, item.id) for source in item.images] for item in chunk]
        batches.append(adapter.collate(chunk, prompts[start:start + args.batch_size], images))
    run = _timed_generation(adapter, batches, args.max_new_tokens)
    described = adapter.describe()
    row = {"mode": label, "adapter": described["adapter"], "decode": described["decode"],
           "load_s": round(load_seconds, 2), **run}
    del adapter, batches
    _free_memory()
    return row


def _agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    return round(sum(a == b for a, b in zip(reference, other)) / max(1, len(reference)), 4)


def run_shape(shape: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    from bench.data import make_set
    from bench.models import build_random_internvl
    from bench.throughput import BenchTask
    from launcher.convert_command import convert_checkpoint

    device = torch.device(args.device if args.device == "cpu" else "cuda:0")
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    model, processor = build_random_internvl(shape, device=device, dtype=dtype)
    folders = {name: workdir / shape / name for name in ("original", "native", "converted")}
    started = time.perf_counter()
    write_original_folder(model, processor.tokenizer, folders["original"])
    write_seconds = time.perf_counter() - started
    model.save_pretrained(folders["native"])
    del model
    _free_memory()
    _native_processor_files(folders["original"], folders["native"], processor.tokenizer)
    synthetic = make_set("realistic", args.items, 448 if shape != "tiny" else 56, seed=0)
    prompts = [BenchTask().prompt(item) for item in synthetic.items]
    # Each folder is removed once measured, so that at most two copies of the weights sit on disk (8b: 32 GB).
    rows = [measure(folders["native"], "native (save_pretrained, processor)", args, synthetic, prompts, device)]
    _remove(folders["native"], args)
    rows.append(measure(folders["original"], "original folder, converted at load", args, synthetic, prompts, device))
    started = time.perf_counter()
    convert_checkpoint(folders["original"], folders["converted"], overwrite=True)
    convert_seconds = time.perf_counter() - started
    _remove(folders["original"], args)
    rows.append(measure(folders["converted"], "launcher convert output", args, synthetic, prompts, device))
    _remove(folders["converted"], args)
    reference = rows[0]["tokens"]
    for row in rows:
        row.update(shape=shape, batch_size=args.batch_size, agreement_with_native=_agreement(reference, row["tokens"]),
                   write_original_s=round(write_seconds, 2), convert_s=round(convert_seconds, 2))
    rows[1]["agreement_with_convert_output"] = _agreement(rows[2]["tokens"], rows[1]["tokens"])
    for row in rows:
        row.pop("tokens")
    return rows


def _native_processor_files(original_folder: Path, native_folder: Path, tokenizer: Any) -> None:
    """Tokenizer, generation config and processor files for the natively saved model (as `convert` writes)."""
    from transformers import GenerationConfig

    from launcher.convert_command import write_processor_files
    from launcher.internvl_conversion import read_original
    from launcher.internvl_templates import get_template, system_message_for

    original = read_original(original_folder)
    template = get_template(original.template_name)
    tokenizer.save_pretrained(native_folder)
    GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids(template.stop_text),
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(native_folder)
    write_processor_files(native_folder, original, template, system_message_for(original.config, template))


def _remove(folder: Path, args: argparse.Namespace) -> None:
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shapes", help="comma list of bench/models.py shapes (default: 2b,8b; cpu: tiny)")
    parser.add_argument("--items", type=int, help="items per measurement (default 512 on cuda, 8 on cpu)")
    parser.add_argument("--batch-size", type=int, help="default 128 on cuda, 4 on cpu")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--workdir", type=Path, help="where the checkpoints are written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    fill_defaults(args, {"shapes": "2b,8b" if cuda else "tiny", "items": 512 if cuda else 8,
                         "batch_size": 128 if cuda else 4, "dtype": "bfloat16" if cuda else "float32"})
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import transformers

    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convert_speed_"))
    rows: list[dict[str, Any]] = []
    report = {"kind": "convert_speed", "device": args.device, "dtype": args.dtype, "items": args.items,
              "max_new_tokens": args.max_new_tokens, "versions": {"torch": torch.__version__,
                                                                  "transformers": transformers.__version__},
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "rows": rows}
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        rows.extend(run_shape(shape, args, workdir))
        write_report(args.out, report)      # after each shape: a later shape's timeout keeps the earlier rows
        print_table(rows, ["shape", "mode", "adapter", "load_s", "items", "items_per_s", "agreement_with_native",
                           "decode"])
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
