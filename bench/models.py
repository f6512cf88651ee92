"""Random-weight InternVL models with real architectures, built in code directly on their devices.

`build_random_internvl(shape, device, dtype)` returns `(model, processor)`: a transformers-native
`InternVLForConditionalGeneration` (Qwen2 text model) and an `InternVLProcessor` around our word-level
tokenizer (`launcher.tiny_models.build_tokenizer`) and a GotOcr2 image processor with InternVL's
settings. Nothing is downloaded, saved or reloaded:

1. the model is created on the meta device (no memory, no init);
2. every parameter and buffer is materialised on its device (one device, or a device map: module
   name -> device, as `plan_device_map` / `split_model` return), tied weights stay tied;
3. a fast in-place init on the device (normal(0, initializer_range) for matrices and embeddings, ones
   for norm weights, zeros for biases, 0.1 for the vision layer scales); rotary tables are recomputed.
   Each tensor draws from its own generator seeded by its name, so a model split over GPUs has exactly
   the weights of the same model on one GPU (split outputs can be checked against one-GPU outputs);
4. optionally, every `nn.Linear` but the head is swapped for bitsandbytes' `Linear8bitLt` /
   `Linear4bit`, configured by a `BitsAndBytesConfig` (the object `--load-in-8bit/4bit` builds);
5. with several devices, accelerate's `dispatch_model` adds the hooks that move activations between
   GPUs (what `from_pretrained(device_map=...)` does).

Shapes (parameters):

| shape | vision | text (Qwen2) | params |
| --- | --- | --- | --- |
| tiny | 32 wide, 2 layers, 56 px tiles, 4 tokens a tile | 64 wide, 4 layers | ~0.1 M + vocab |
| 2b | InternViT-300M (1024, 24 layers) | Qwen2.5-1.5B (1536, 28 layers, 12/2 heads, tied) | 1.86 B |
| 8b | InternViT-300M | Qwen2.5-7B (3584, 28 layers, 28/4 heads) | 7.94 B |
| 38b | InternViT-6B (3200, 45 layers, RMSNorm, QK-norm) | Qwen2.5-32B (5120, 64 layers, 40/8 heads) | 38.4 B |

The tokenizer knows a few hundred words; the model's vocabulary is the real one (151674): generated ids
past the tokenizer's words decode to nothing, so benchmarks compare token ids, not text.
Random weights give flat logits: greedy agreement between batch sizes is a lower bound for a trained model.
"""
from __future__ import annotations

import time
import zlib
from typing import Any, Mapping

import torch
from torch import nn

SHAPES = ("tiny", "2b", "8b", "38b")
QWEN25_VOCAB = 151674   # InternVL 2.5 / 3 Qwen checkpoints: Qwen2.5's 151643 + special and image tokens

_VIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 image_size=448, patch_size=14, norm_type="layer_norm", use_qk_norm=False)
_VIT_6B = dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
               image_size=448, patch_size=14, norm_type="rms_norm", use_qk_norm=True)
_QWEN25 = {
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, tie_word_embeddings=False),
    "32b": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                intermediate_size=27648, tie_word_embeddings=False),
}
_SHAPE_PARTS = {"2b": (_VIT_300M, "1.5b"), "8b": (_VIT_300M, "7b"), "38b": (_VIT_6B, "32b")}


def build_config(shape: str, tokenizer: Any | None = None) -> Any:
    """The `InternVLConfig` of `shape` (module docstring), image token = our tokenizer's `<IMG_CONTEXT>`."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    from launcher.tiny_models import IMG_CONTEXT_TOKEN, build_tokenizer, tiny_internvl_config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if shape == "tiny":
        return tiny_internvl_config(len(tokenizer), image_token_id)
    vision, text_name = _SHAPE_PARTS[shape]
    text = dict(_QWEN25[text_name])
    tie = text.pop("tie_word_embeddings")
    vision_config = InternVLVisionConfig(**vision)
    text_config = Qwen2Config(vocab_size=QWEN25_VOCAB, max_position_embeddings=32768, rope_theta=1_000_000.0,
                              rms_norm_eps=1e-6, tie_word_embeddings=tie, hidden_act="silu",
                              initializer_range=0.02, **text)
    grid = vision["image_size"] // vision["patch_size"]
    return InternVLConfig(vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
                          image_seq_length=int(grid * grid * 0.25), downsample_ratio=0.5,
                          tie_word_embeddings=tie)


def build_processor(config: Any, tokenizer: Any | None = None) -> Any:
    """An `InternVLProcessor` for `config`: our tokenizer, GotOcr2 tiles of the model's size, ImageNet mean/std."""
    from transformers import InternVLProcessor

    from launcher.adapters import VideoProcessorLeftOut, processor_without_video
    from launcher.tiny_models import CHAT_TEMPLATE, build_tokenizer

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_size = config.vision_config.image_size
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    return processor_without_video(InternVLProcessor)(
        image_processor=_image_processor(image_size), tokenizer=tokenizer, video_processor=VideoProcessorLeftOut(),
        image_seq_length=int(config.image_seq_length), chat_template=CHAT_TEMPLATE)


def _image_processor(image_size: int) -> Any:
    """GotOcr2's PIL image processor (no torchvision needed); older transformers: the plain class."""
    try:
        from launcher.tiny_models import _image_processor as tiny_image_processor

        return tiny_image_processor(image_size)
    except ImportError:
        import transformers

        from launcher.tiny_models import IMAGENET_MEAN, IMAGENET_STD

        return transformers.GotOcr2ImageProcessor(
            size={"height": image_size, "width": image_size}, crop_to_patches=False, min_patches=1,
            max_patches=12, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


def _device_of(name: str, device_map: Mapping[str, Any], default: Any) -> torch.device:
    """The device of a parameter/buffer name under `device_map` (longest matching module prefix)."""
    best, best_len = default, -1
    for prefix, device in device_map.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = device, len(prefix)
    if best is None:
        raise ValueError(f"{name} is on no device of the device map")
    if isinstance(best, int):
        return torch.device("cuda", best)
    return torch.device(best)


def materialize(model: nn.Module, device_map: Mapping[str, Any]) -> None:
    """Replace every meta tensor by an empty one on its device; shared (tied) tensors stay shared."""
    made: dict[int, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for kind in ("_parameters", "_buffers"):
            tensors = getattr(module, kind)
            for name, tensor in list(tensors.items()):
                if tensor is None:
                    continue
                key = id(tensor)
                if key not in made:
                    full = f"{module_name}.{name}" if module_name else name
                    empty = torch.empty_like(tensor, device=_device_of(full, device_map, None))
                    made[key] = nn.Parameter(empty, requires_grad=False) if kind == "_parameters" else empty
                tensors[name] = made[key]


@torch.no_grad()
def init_random(model: nn.Module, std: float = 0.02, seed: int = 0, layer_scale: float = 0.1) -> None:
    """In-place random init on the parameters' own devices (module docstring); rotary tables recomputed."""
    done: set[int] = set()
    for module_name, module in model.named_modules():
        norm = "Norm" in type(module).__name__
        for name, param in module.named_parameters(recurse=False):
            if id(param) in done:
                continue
            done.add(id(param))
            if norm:
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name.startswith("bias") or name.endswith("bias"):
                param.zero_()
            elif name in ("lambda_1", "lambda_2"):
                param.fill_(layer_scale)
            else:
                # One generator per tensor, seeded by its name: the same weights whatever the device map.
                generator = torch.Generator(device=param.device)
                generator.manual_seed(seed * 1_000_003 + zlib.crc32(f"{module_name}.{name}".encode()))
                param.normal_(0.0, std, generator=generator)
        if "Rotary" in type(module).__name__ and hasattr(module, "config"):
            with torch.device("cpu"):
                fresh = type(module)(module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                module._buffers[name] = buffer.to(module._buffers[name].device)


def quantize_linears(model: nn.Module, quantization_config: Any, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Swap each `nn.Linear` (not those named in `skip`) for its bitsandbytes module, on its device.

    `quantization_config` is a `transformers.BitsAndBytesConfig`; its 8-bit threshold, 4-bit quant type,
    double quantisation, compute dtype and storage are honoured, as `from_pretrained` would. Returns the
    number of layers converted. One layer at a time, so the peak is the bf16 model plus one layer.
    """
    import bitsandbytes as bnb

    converted = 0
    for module_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{module_name}.{child_name}" if module_name else child_name
            if type(child) is not nn.Linear or any(full == s or full.endswith("." + s) for s in skip):
                continue
            if (not quantization_config.load_in_8bit and child.weight.device.type == "cpu"
                    and child.in_features % 64):
                continue  # bitsandbytes' CPU 4-bit kernels need whole 64-value blocks (tiny test shapes only)
            weight = child.weight.data
            device = weight.device
            has_bias = child.bias is not None
            if quantization_config.load_in_8bit:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=has_bias,
                                          has_fp16_weights=False,
                                          threshold=quantization_config.llm_int8_threshold, device="meta")
                param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                new.weight = param._quantize(device)
            else:
                compute_dtype = quantization_config.bnb_4bit_compute_dtype or weight.dtype
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=has_bias,
                                        compute_dtype=compute_dtype,
                                        compress_statistics=quantization_config.bnb_4bit_use_double_quant,
                                        quant_type=quantization_config.bnb_4bit_quant_type,
                                        quant_storage=quantization_config.bnb_4bit_quant_storage, device="meta")
                param = bnb.nn.Params4bit(weight, requires_grad=False,
                                          compress_statistics=quantization_config.bnb_4bit_use_double_quant,
                                          quant_type=quantization_config.bnb_4bit_quant_type,
                                          quant_storage=quantization_config.bnb_4bit_quant_storage, module=new)
                new.weight = param._quantize(device)
            if has_bias:
                new.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, new)
            del child, weight, param
            converted += 1
    return converted


def build_random_internvl(shape: str, device: Any = "cpu", dtype: torch.dtype = torch.bfloat16, *,
                          device_map: Mapping[str, Any] | None = None, quantization_config: Any = None,
                          seed: int = 0, attn_implementation: str = "sdpa", std: float = 0.02,
                          main_device: Any = None) -> tuple[Any, Any]:
    """`(model, processor)` for `shape` on `device` (or spread by `device_map`); see the module docstring.

    `main_device="cpu"` with a map over a GPU and the CPU runs the CPU's modules on the CPU (accelerate's
    default would keep their weights there and run them on the GPU).

    `model.bench_info` holds the build time, the parameter count and bytes per device.
    """
    from transformers import InternVLForConditionalGeneration

    from launcher.tiny_models import build_tokenizer

    started = time.perf_counter()
    tokenizer = build_tokenizer()
    config = build_config(shape, tokenizer)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration._from_config(config, dtype=dtype,
                                                              attn_implementation=attn_implementation)
    device_map = dict(device_map) if device_map else {"": device}
    materialize(model, device_map)
    init_random(model, std=std if shape != "tiny" else 0.2, seed=seed)
    leftovers = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"still on the meta device after materialising: {leftovers[:5]}")
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    quantized = 0
    if quantization_config is not None:
        quantized = quantize_linears(model, quantization_config)
    devices = {str(_device_of(name, device_map, None)) for name in device_map} if device_map else {str(device)}
    if len(devices) > 1:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=dict(device_map), main_device=main_device)
        model.hf_device_map = dict(device_map)
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    processor = build_processor(config, tokenizer)
    bytes_per_device: dict[str, int] = {}
    seen: set[int] = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        key = str(tensor.device)
        bytes_per_device[key] = bytes_per_device.get(key, 0) + tensor.numel() * tensor.element_size()
    model.bench_info = {
        "shape": shape, "dtype": str(dtype).replace("torch.", ""),
        "parameters": parameters,
        "quantized_linears": quantized, "build_seconds": round(time.perf_counter() - started, 2),
        "weight_bytes_per_device": bytes_per_device,
        "attn_implementation": {"text": model.config.text_config._attn_implementation,
                                "vision": model.config.vision_config._attn_implementation},
    }
    return model, processor


def parameter_count(shape: str) -> int:
    """Parameters of `shape`, counted on the meta device (no memory)."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration._from_config(build_config(shape))
    return sum(p.numel() for p in model.parameters())
