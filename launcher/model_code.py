"""Which code runs an original InternVL folder: transformers' native model (converted) or the folder's own.

`--model-code auto|native|remote` (default auto) chooses, for folders whose config.json says
`InternVLChatModel` (OpenGVLab's original format; for any other folder the flag changes nothing):

| --model-code | the folder converts (`internvl_conversion.read_original`) | it does not (InternLM3, GPT-OSS, ps_version v1, ...) |
| --- | --- | --- |
| auto | converted at load to `InternVLForConditionalGeneration`; no remote code runs, no `--trust-remote-code` needed | its own code with `--trust-remote-code` (one line says why), else exit 2 saying so |
| native | converted | exit 2: why it cannot be converted |
| remote | its own code (`--trust-remote-code` required, as for any remote code) | the same |

Quantization (`--load-in-8bit/4bit`) is not applied while converting: `auto` then uses the folder's own
code when `--trust-remote-code` is given, else stops and points to `python -m launcher convert SRC DST`,
whose output loads like any native checkpoint, quantized too. The choice and its reason are in
`run.json` (the adapter's `model_code`).

`load_model_and_tokenizer(args)` therefore returns, for an original folder, the converted native model
(`InternVLForConditionalGeneration`; InternVL's `chat` / `batch_chat` do not exist on it) unless
`model_code="remote"` is asked for, which returns InternVL's own `InternVLChatModel` with its
`chat` / `batch_chat`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from launcher.errors import UserError
from launcher.internvl_conversion import OriginalInternVL, is_original_internvl, read_original

MODEL_CODE_CHOICES = ("auto", "native", "remote")


@dataclass(frozen=True)
class ModelCodeChoice:
    """The path a checkpoint takes: "native" (a transformers checkpoint as it is), "converted" or "remote"."""

    path: str
    reason: str
    original: OriginalInternVL | None = None


def converted_folder_original(path: Any) -> OriginalInternVL | None:
    """For a folder written by `python -m launcher convert`: the facts of its source (internvl_original.json)."""
    import json
    from pathlib import Path

    from launcher.convert_command import ORIGINAL_CONFIG_FILE

    marker = Path(path) / ORIGINAL_CONFIG_FILE
    if not marker.is_file():
        return None
    original = read_original(path, json.loads(marker.read_text())["config"])
    return original if original.convertible else None


def choose_model_code(info: Any, args: Any) -> ModelCodeChoice:
    """The path for checkpoint `info` (`loading.CheckpointInfo`) under `args` (module docstring's table)."""
    mode = str(getattr(args, "model_code", None) or "auto")
    if mode not in MODEL_CODE_CHOICES:
        raise UserError(f"--model-code must be one of {', '.join(MODEL_CODE_CHOICES)}, got {mode!r}")
    if not is_original_internvl(info.config):
        converted_once = converted_folder_original(info.path)
        if converted_once is not None:
            return ModelCodeChoice("native", "written by python -m launcher convert: loaded natively, fed as "
                                             "InternVL feeds its original", converted_once)
        if info.is_remote_code:
            return ModelCodeChoice("remote", "the folder ships its own model code (auto_map)")
        return ModelCodeChoice("native", "a transformers-native checkpoint")
    original = read_original(info.path, info.config)
    trust = bool(getattr(args, "trust_remote_code", False))
    quantized = bool(getattr(args, "load_in_8bit", False) or getattr(args, "load_in_4bit", False))
    if mode == "remote":
        return ModelCodeChoice("remote", "--model-code remote", original)
    if not original.convertible:
        if mode == "native":
            raise UserError(f"--checkpoint {info.path} cannot be converted to transformers' native InternVL: "
                            f"{original.unconvertible_reason}; use --model-code remote --trust-remote-code")
        if not trust:
            raise UserError(f"--checkpoint {info.path} cannot be converted to transformers' native InternVL "
                            f"({original.unconvertible_reason}): pass --trust-remote-code to run its own code")
        note = f"not converted ({original.unconvertible_reason}): running its own code"
        print(f"[launcher] {info.path}: {note}", file=sys.stderr, flush=True)
        return ModelCodeChoice("remote", note, original)
    if quantized:
        flag = "--load-in-8bit" if getattr(args, "load_in_8bit", False) else "--load-in-4bit"
        if mode == "auto" and trust:
            note = f"{flag} is not applied while converting: running its own code"
            print(f"[launcher] {info.path}: {note}", file=sys.stderr, flush=True)
            return ModelCodeChoice("remote", note, original)
        raise UserError(f"{flag} with an original InternVL folder: convert it once (python -m launcher convert "
                        f"{info.path} DST) and pass DST as --checkpoint, or add --trust-remote-code to run "
                        f"its own code quantized")
    return ModelCodeChoice("converted", f"original {original.llm_architecture} InternVL folder converted at load "
                                        f"(--model-code {mode})", original)


def converted_skeleton(args: Any) -> Any:
    """The meta-device native model an original folder converts to (for `--dry-run`), or None when the
    checkpoint is not an original folder or will run its own code."""
    from launcher.loading import inspect_checkpoint

    info = inspect_checkpoint(getattr(args, "checkpoint", None))
    if not is_original_internvl(info.config):
        return None
    choice = choose_model_code(info, args)
    if choice.path != "converted":
        return None
    from launcher.internvl_conversion import empty_native_model, native_config
    from launcher.internvl_templates import IMG_CONTEXT_TOKEN
    from launcher.original_tokenizers import load_original_tokenizer

    image_token_id = load_original_tokenizer(info.path).convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    return empty_native_model(native_config(choice.original, image_token_id), torch.bfloat16)


def load_converted(args: Any, info: Any, choice: ModelCodeChoice, devices: Sequence[torch.device],
                   dtype: torch.dtype) -> Any:
    """`loading.LoadedModel` of the converted native model on `devices` (one, or K GPUs by the planner)."""
    from launcher.internvl_conversion import empty_native_model, load_converted_model, native_config
    from launcher.internvl_templates import IMG_CONTEXT_TOKEN
    from launcher.loading import LoadedModel, plan_multi_gpu_map
    from launcher.original_tokenizers import load_original_tokenizer

    original = choice.original
    tokenizer = load_original_tokenizer(info.path)
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise UserError(f"--checkpoint {info.path}: its tokenizer has no {IMG_CONTEXT_TOKEN} token; not an InternVL "
                        f"chat checkpoint")
    if len(devices) > 1:
        if any(d.type != "cuda" for d in devices):
            raise UserError(f"a model split over several devices needs GPUs, got {[str(d) for d in devices]}")
        skeleton = empty_native_model(native_config(original, image_token_id), dtype)
        device_map = plan_multi_gpu_map(
            info, devices, method=getattr(args, "device_map_method", "planner") or "planner", dtype=dtype,
            batch_size=int(getattr(args, "batch_size", 16) or 16),
            max_new_tokens=int(getattr(args, "max_new_tokens", None) or 64),
            tiles_per_item=int(getattr(args, "max_num", 6) or 6) + 1 if getattr(args, "dynamic", False) else 1,
            skeleton=skeleton)
    else:
        device = devices[0]
        device_map = {"": device.index if device.type == "cuda" else str(device)}
    model = load_converted_model(original, image_token_id, dtype=dtype, device_map=device_map)
    if len(devices) > 1:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=device_map)
    # generate() stops where InternVL's chat stops: the template's stop token (as `convert` writes it too).
    from launcher.internvl_templates import get_template

    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(get_template(original.template_name).stop_text)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, devices=list(devices), dtype=dtype,
                       device_map=dict(device_map), quantization=None, original=original,
                       model_code=choice)
