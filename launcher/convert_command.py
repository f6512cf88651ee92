"""`python -m launcher convert SRC DST`: an original InternVL folder written once as a native checkpoint.

    python -m launcher convert /models/InternVL2_5-8B /models/InternVL2_5-8B-native
    python launch.py --checkpoint /models/InternVL2_5-8B-native --task textvqa_val   # no conversion at load

What DST holds:

* `config.json` (`InternVLConfig`, `InternVLForConditionalGeneration`) and the weights as safetensors, one
  output shard per input shard (`model.safetensors.index.json` when several), converted by
  `launcher.internvl_conversion` while streaming: one shard's tensors in memory at a time. Weights keep
  the source's dtype.
* `generation_config.json`: eos = the template's stop token (what InternVL's `chat` stops at).
* The tokenizer files as they are (including InternLM2's `tokenization_internlm2.py`, for users of
  plain transformers with `trust_remote_code`; this launcher never runs it), without `auto_map` for the model.
* `preprocessor_config.json` (GotOcr2 image processor: tile size, ImageNet mean/std), `processor_config.json`
  (image tokens per tile) and `chat_template.jinja` (InternVL's template with its system message), so that
  plain transformers can run the folder too. transformers' processor tiles a little differently from
  InternVL (it always adds the thumbnail, normalises in its own order), hence:
* `internvl_original.json`: the source's config.json. With it, this launcher feeds DST exactly as it feeds
  the source converted at load (InternVL's tiling, template, tokenizer behaviour, stop token): the same
  predictions, while the model itself loads as a plain native checkpoint (quantization and the multi-GPU
  planner work as for any native model).

Exit codes: 0 written; 2 a user error (SRC not an original InternVL folder, not convertible, DST not empty).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from launcher.errors import UserError
from launcher.outputs import atomic_write_json, atomic_write_text

ORIGINAL_CONFIG_FILE = "internvl_original.json"
# Files of the source that describe the tokenizer (copied as they are).
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "tokenization_internlm2.py",
                    "tokenization_internlm2_fast.py")


def chat_template_jinja(template: Any, system_message: str) -> str:
    """InternVL's template as a transformers chat template (images as `<IMG_CONTEXT>\\n`, which the native
    processor expands to `<img>` + context tokens + `</img>`)."""
    system = (template.system_template.format(system_message=system_message) + template.sep)
    return (
        "{{ " + json.dumps(system) + " }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ " + json.dumps(template.user_role) + " }}"
        "{% elif message['role'] == 'assistant' %}{{ " + json.dumps(template.assistant_role) + " }}{% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ " + json.dumps(template.sep) + " }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ " + json.dumps(template.assistant_role) + " }}{% endif %}"
    )


def convert_checkpoint(source: str | Path, destination: str | Path, *, overwrite: bool = False) -> Path:
    """Write the native checkpoint of original folder `source` into `destination` (module docstring)."""
    from safetensors.torch import save_file

    from launcher.internvl_conversion import (_original_has_head, is_original_internvl, iter_converted_shards,
                                              native_config, read_original, weight_files)
    from launcher.internvl_templates import IMG_CONTEXT_TOKEN, get_template, system_message_for
    from launcher.loading import inspect_checkpoint
    from launcher.original_tokenizers import load_original_tokenizer

    info = inspect_checkpoint(source)
    if not is_original_internvl(info.config):
        raise UserError(f"{source} is not an original InternVL folder (config.json's architectures: "
                        f"{info.config.get('architectures')}); nothing to convert")
    original = read_original(info.path, info.config)
    if not original.convertible:
        raise UserError(f"{source} cannot be converted: {original.unconvertible_reason}")
    out = Path(destination).expanduser()
    if out.resolve() == info.path.resolve():
        raise UserError("convert: DST must be another folder than SRC")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"convert: {out} is not empty: pass another folder, or --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_original_tokenizer(info.path)
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    tied = not _original_has_head(original)
    config = native_config(original, image_token_id, tie_word_embeddings=tied)
    config.dtype = str(info.config.get("torch_dtype") or "bfloat16")
    template = get_template(original.template_name)
    system_message = system_message_for(original.config, template)

    files = weight_files(info.path)
    weight_map: dict[str, str] = {}
    total = 0
    for number, shard in enumerate(iter_converted_shards(original), start=1):
        name = "model.safetensors" if len(files) == 1 else f"model-{number:05d}-of-{len(files):05d}.safetensors"
        tensors = {key: value.contiguous() for key, value in shard.items()}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for key, value in tensors.items():
            weight_map[key] = name
            total += value.numel() * value.element_size()
        del shard, tensors
    if len(files) > 1:
        atomic_write_json(out / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    config.save_pretrained(out)

    from transformers import GenerationConfig

    stop_id = tokenizer.convert_tokens_to_ids(template.stop_text)
    GenerationConfig(eos_token_id=stop_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    for file in _TOKENIZER_FILES:
        if (info.path / file).is_file():
            shutil.copy2(info.path / file, out / file)
    write_processor_files(out, original, template, system_message)
    atomic_write_json(out / ORIGINAL_CONFIG_FILE, {"source": str(info.path), "config": original.config})
    return out


def write_processor_files(out: Path, original: Any, template: Any, system_message: str) -> None:
    """preprocessor_config.json, processor_config.json and chat_template.jinja of a converted folder."""
    from launcher.tiling import IMAGENET_MEAN, IMAGENET_STD

    atomic_write_json(out / "preprocessor_config.json", {
        "image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
        "do_resize": True, "size": {"height": original.image_size, "width": original.image_size},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "do_convert_rgb": True,
        "crop_to_patches": False, "min_patches": 1,
        "max_patches": int(original.config.get("max_dynamic_patch", 12))})
    atomic_write_json(out / "processor_config.json", {"processor_class": "InternVLProcessor",
                                                      "image_seq_length": original.num_image_token})
    atomic_write_text(out / "chat_template.jinja", chat_template_jinja(template, system_message))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher convert", allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SRC", help="original InternVL folder (config.json: InternVLChatModel)")
    parser.add_argument("destination", metavar="DST", help="new folder for the native checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it is not empty")
    args = parser.parse_args(argv)
    try:
        out = convert_checkpoint(args.source, args.destination, overwrite=args.overwrite)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {out} (native InternVL; run it with --checkpoint {out})")
    return 0


__all__ = ["convert_checkpoint", "chat_template_jinja", "write_processor_files", "ORIGINAL_CONFIG_FILE", "main"]
