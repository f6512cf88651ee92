"""Original InternVL folders (remote-code `InternVLChatModel`) loaded as transformers' native InternVL.

OpenGVLab publishes InternVL as folders whose config.json says `"architectures": ["InternVLChatModel"]`
and whose model is defined by Python files in the folder (`modeling_internvl_chat.py`,
`modeling_intern_vit.py`, for InternLM2-based models `modeling_internlm2.py`). This module turns such a
folder into `transformers.InternVLForConditionalGeneration` without importing any of those files:

* `read_original(path)`: config.json read as JSON; which LLM, template, tiling and image-token count;
  `unconvertible_reason` says why a folder cannot be converted (then the remote-code path is the way).
* `native_config(original, image_token_id)`: the translated `InternVLConfig`. Vision (InternViT-300M and
  -6B): `qkv_bias` -> `attention_bias`, `qk_normalization` -> `use_qk_norm`, `norm_type` (layer_norm or
  rms_norm), no final layernorm (`use_mean_pooling`); `force_image_size` becomes the vision image size
  (position embeddings resized once, see below); `select_layer` -> `vision_feature_layer`;
  `downsample_ratio`; `ps_version` "v2" only (InternVL's "v1" pixel shuffle leaves the token grid
  transposed, which the native model cannot express). Text: the LLM's own config for Qwen2/2.5, Qwen3,
  Llama and Phi-3 (Phi-3's sliding window wider than its context dropped: it never masks anything);
  InternLM2/2.5 as Llama (same computation: fused `wqkv` split, `rope_scaling` carried over, `bias` ->
  `attention_bias`). Tied embeddings when the weights hold no separate head.
* `converted_tensors(original, name, tensor)`: one original tensor -> the native (name, tensor) pairs.
  InternViT's fused `attn.qkv` -> `q_proj/k_proj/v_proj` (rows: q, k, v); `ls1/ls2` -> `lambda_1/2`;
  `norm1/2` -> `layernorm_before/after`; `mlp1.0/1/3` -> the projector's `layer_norm/linear_1/linear_2`.
  InternLM2's `wqkv` rows are grouped per key/value head: for each of the `kv` heads, `groups` query
  heads, then its key, then its value (`(kv, groups + 2, head_dim)`), so q/k/v are taken per group;
  `w1/w3/w2` -> `gate/up/down_proj`, `wo` -> `o_proj`, `attention_norm/ffn_norm` ->
  `input/post_attention_layernorm`, `tok_embeddings` -> `embed_tokens`, `output` -> `lm_head`.
* `load_converted_model(original, ...)`: the native model built with empty (meta) parameters, then each
  safetensors shard read, its tensors converted and assigned (cast to the run's dtype, on their device)
  one shard at a time: host memory never holds more than one shard's converted tensors.
* `save_converted(src, dst)`: the same, written once as a native checkpoint (`python -m launcher
  convert SRC DST`, `launcher/convert_command.py`).

Position embeddings: InternViT interpolates its position embeddings (bicubic, in float32) from its
trained grid to the grid of each input on every call. When `force_image_size` differs from the vision
config's `image_size` (InternVL-Chat-V1-2 era), we interpolate once, at conversion, the same way; with
equal sizes the weights are kept as they are (InternViT's interpolation to the same grid is the identity).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from launcher.errors import UserError
from launcher.internvl_templates import get_template

ORIGINAL_ARCHITECTURE = "InternVLChatModel"

# LLM architecture in llm_config -> (our family name, native text model_type)
CONVERTIBLE_LLMS: dict[str, tuple[str, str]] = {
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Qwen3ForCausalLM": ("qwen3", "qwen3"),
    "LlamaForCausalLM": ("llama", "llama"),
    "InternLM2ForCausalLM": ("internlm2", "llama"),
    "Phi3ForCausalLM": ("phi3", "phi3"),
}

# InternVisionConfig's defaults (InternViT-6B), for keys a config.json leaves out.
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 3200, "num_attention_heads": 25, "intermediate_size": 12800, "num_hidden_layers": 48,
    "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm", "layer_norm_eps": 1e-6,
    "hidden_act": "gelu", "image_size": 224, "patch_size": 14, "num_channels": 3,
}

# Keys of an original llm_config that describe the remote code or training, not the computation.
_DROPPED_LLM_KEYS = {
    "_name_or_path", "auto_map", "architectures", "attn_implementation", "_attn_implementation",
    "_attn_implementation_autoset", "use_flash_attn", "torch_dtype", "dtype", "transformers_version",
    "model_type", "bias", "use_bfloat16", "_commit_hash", "quantization_config",
}


@dataclass(frozen=True)
class OriginalInternVL:
    """What an original InternVL folder's config.json says (read as JSON; no code imported)."""

    path: Path
    config: dict[str, Any]
    llm_config: dict[str, Any]
    vision_config: dict[str, Any]
    llm_architecture: str
    family: str | None              # our name of the LLM family, None when not convertible
    template_name: str | None
    image_size: int                 # tile size: force_image_size or the vision image size
    patch_size: int
    downsample_ratio: float
    num_image_token: int
    use_thumbnail: bool
    ps_version: str
    select_layer: int
    unconvertible_reason: str | None = field(default=None)

    @property
    def convertible(self) -> bool:
        return self.unconvertible_reason is None


def is_original_internvl(config: Mapping[str, Any]) -> bool:
    """config.json of an original InternVL folder: `architectures` names InternVLChatModel."""
    return ORIGINAL_ARCHITECTURE in (config.get("architectures") or [])


def _size(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def read_original(path: str | Path, config: Mapping[str, Any] | None = None) -> OriginalInternVL:
    """The folder's facts and whether it converts (`unconvertible_reason`)."""
    folder = Path(path)
    if config is None:
        config = json.loads((folder / "config.json").read_text())
    config = dict(config)
    llm = dict(config.get("llm_config") or {})
    vision = {**_VISION_DEFAULTS, **dict(config.get("vision_config") or {})}
    architecture = str((llm.get("architectures") or ["?"])[0])
    vision_size = _size(vision["image_size"])
    image_size = _size(config.get("force_image_size") or vision_size)
    patch_size = _size(vision["patch_size"])
    downsample_ratio = float(config.get("downsample_ratio", 0.5))
    num_image_token = int((image_size // patch_size) ** 2 * downsample_ratio ** 2)
    ps_version = str(config.get("ps_version") or "v1")
    template_name = config.get("template")
    family = CONVERTIBLE_LLMS.get(architecture, (None, None))[0]

    reason = None
    if family is None:
        reason = (f"its language model {architecture} has no conversion here (converted: "
                  f"{', '.join(sorted(CONVERTIBLE_LLMS))})")
    elif get_template(template_name) is None:
        reason = f"its conversation template {template_name!r} is not implemented here (launcher/internvl_templates.py)"
    elif ps_version != "v2":
        reason = (f"its pixel shuffle is ps_version {ps_version!r}; the native InternVL model implements only 'v2' "
                  f"(v1 leaves the image token grid transposed)")
    elif config.get("use_backbone_lora") or config.get("use_llm_lora"):
        reason = "it wraps LoRA adapters (use_backbone_lora / use_llm_lora): merge them first"
    elif _size(vision["hidden_size"]) % int(vision["num_attention_heads"]):
        reason = "its vision hidden size is not a multiple of its attention heads"
    return OriginalInternVL(
        path=folder, config=config, llm_config=llm, vision_config=vision, llm_architecture=architecture,
        family=family, template_name=template_name, image_size=image_size, patch_size=patch_size,
        downsample_ratio=downsample_ratio, num_image_token=num_image_token,
        use_thumbnail=bool(config.get("use_thumbnail", False)), ps_version=ps_version,
        select_layer=int(config.get("select_layer", -1)), unconvertible_reason=reason)


# ------------------------------------------------------------------------------------------------
# Config


def _vision_config(original: OriginalInternVL) -> Any:
    from transformers import InternVLVisionConfig

    vision = original.vision_config
    return InternVLVisionConfig(
        hidden_size=int(vision["hidden_size"]), num_hidden_layers=int(vision["num_hidden_layers"]),
        num_attention_heads=int(vision["num_attention_heads"]), intermediate_size=int(vision["intermediate_size"]),
        hidden_act=str(vision["hidden_act"]), layer_norm_eps=float(vision["layer_norm_eps"]),
        norm_type=str(vision["norm_type"]), attention_bias=bool(vision["qkv_bias"]),
        use_qk_norm=bool(vision["qk_normalization"]), num_channels=int(vision.get("num_channels", 3)),
        image_size=[original.image_size, original.image_size], patch_size=[original.patch_size, original.patch_size],
        # InternViT has no final layernorm: use_mean_pooling makes the native one an identity.
        use_mean_pooling=True, use_absolute_position_embeddings=True, use_mask_token=False,
        layer_scale_init_value=float(vision.get("initializer_factor", 0.1)),
        attention_dropout=0.0, projection_dropout=0.0, hidden_dropout_prob=0.0)


def _text_config(original: OriginalInternVL, tie_word_embeddings: bool) -> Any:
    from transformers import AutoConfig

    llm = {k: v for k, v in original.llm_config.items() if k not in _DROPPED_LLM_KEYS}
    model_type = CONVERTIBLE_LLMS[original.llm_architecture][1]
    if original.family == "internlm2":
        heads = int(llm["num_attention_heads"])
        llm = {
            "vocab_size": llm["vocab_size"], "hidden_size": llm["hidden_size"],
            "intermediate_size": llm["intermediate_size"], "num_hidden_layers": llm["num_hidden_layers"],
            "num_attention_heads": heads, "num_key_value_heads": llm.get("num_key_value_heads", heads),
            "head_dim": int(llm["hidden_size"]) // heads, "hidden_act": llm.get("hidden_act", "silu"),
            "max_position_embeddings": llm.get("max_position_embeddings", 2048),
            "rms_norm_eps": llm.get("rms_norm_eps", 1e-6), "rope_theta": llm.get("rope_theta", 10000.0),
            "rope_scaling": llm.get("rope_scaling"), "attention_bias": bool(original.llm_config.get("bias", False)),
            "mlp_bias": False, "bos_token_id": llm.get("bos_token_id"), "eos_token_id": llm.get("eos_token_id"),
            "pad_token_id": llm.get("pad_token_id"),
        }
    if original.family == "phi3":
        window = llm.get("sliding_window")
        if window is not None and int(window) >= int(llm.get("max_position_embeddings") or 0):
            llm["sliding_window"] = None   # wider than the context: masks nothing (InternVL's eager path ignores it)
        scaling = dict(llm.get("rope_scaling") or {})
        if scaling and "original_max_position_embeddings" in llm:
            scaling.setdefault("original_max_position_embeddings", llm["original_max_position_embeddings"])
            llm["rope_scaling"] = scaling
    llm["tie_word_embeddings"] = tie_word_embeddings
    llm["use_cache"] = True
    return AutoConfig.for_model(model_type, **llm)


def native_config(original: OriginalInternVL, image_token_id: int, *, tie_word_embeddings: bool = False) -> Any:
    """The `InternVLConfig` of the converted model (module docstring)."""
    from transformers import InternVLConfig

    if not original.convertible:
        raise UserError(f"--checkpoint {original.path} cannot be converted: {original.unconvertible_reason}")
    text_config = _text_config(original, tie_word_embeddings)
    config = InternVLConfig(
        vision_config=_vision_config(original), text_config=text_config, image_token_id=int(image_token_id),
        image_seq_length=original.num_image_token, downsample_ratio=original.downsample_ratio,
        projector_hidden_act="gelu", vision_feature_layer=original.select_layer,
        vision_feature_select_strategy="default", tie_word_embeddings=tie_word_embeddings)
    config.architectures = ["InternVLForConditionalGeneration"]
    return config


# ------------------------------------------------------------------------------------------------
# Weights


_VISION_RENAMES = (
    ("embeddings.class_embedding", "embeddings.cls_token"),
    ("embeddings.position_embedding", "embeddings.position_embeddings"),
    ("embeddings.patch_embedding.", "embeddings.patch_embeddings.projection."),
    ("attn.proj.", "attention.projection_layer."),
    ("attn.q_norm.", "attention.q_norm."),
    ("attn.k_norm.", "attention.k_norm."),
    (".norm1.", ".layernorm_before."),
    (".norm2.", ".layernorm_after."),
)
_PROJECTOR = {"mlp1.0.": "model.multi_modal_projector.layer_norm.", "mlp1.1.": "model.multi_modal_projector.linear_1.",
              "mlp1.3.": "model.multi_modal_projector.linear_2."}
_INTERNLM2_RENAMES = (
    ("tok_embeddings.", "embed_tokens."),
    ("attention.wo.", "self_attn.o_proj."),
    ("feed_forward.w1.", "mlp.gate_proj."),
    ("feed_forward.w3.", "mlp.up_proj."),
    ("feed_forward.w2.", "mlp.down_proj."),
    ("attention_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
)


def _vision_tensors(original: OriginalInternVL, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    rest = name[len("vision_model."):].replace("encoder.layers.", "encoder.layer.")
    for old, new in _VISION_RENAMES:
        rest = rest.replace(old, new)
    if rest.endswith((".ls1", ".ls2")):
        rest = rest[:-3] + "lambda_" + rest[-1]
    prefix = "model.vision_tower."
    if ".attn.qkv." in rest:
        base, kind = rest.split(".attn.qkv.")
        width = tensor.shape[0] // 3
        return [(f"{prefix}{base}.attention.{part}_proj.{kind}", tensor[i * width:(i + 1) * width].contiguous())
                for i, part in enumerate("qkv")]
    if rest == "embeddings.position_embeddings":
        tensor = _resized_position_embeddings(original, tensor)
    return [(prefix + rest, tensor)]


def _resized_position_embeddings(original: OriginalInternVL, tensor: torch.Tensor) -> torch.Tensor:
    """InternViT's bicubic interpolation of the patch position grid, done once for the tile size."""
    trained = _size(original.vision_config["image_size"]) // original.patch_size
    target = original.image_size // original.patch_size
    if trained == target:
        return tensor
    cls, grid = tensor[:, :1], tensor[:, 1:]
    grid = grid.float().reshape(1, trained, trained, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)
    grid = grid.reshape(1, -1, target * target).permute(0, 2, 1).to(tensor.dtype)
    return torch.cat([cls, grid], dim=1)


def _internlm2_tensors(original: OriginalInternVL, rest: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    llm = original.llm_config
    if rest.startswith("output."):
        return [("lm_head." + rest[len("output."):], tensor)]
    rest = rest[len("model."):] if rest.startswith("model.") else rest
    if ".attention.wqkv." in rest:
        base, kind = rest.split(".attention.wqkv.")
        heads = int(llm["num_attention_heads"])
        kv_heads = int(llm.get("num_key_value_heads", heads))
        groups = heads // kv_heads
        head_dim = int(llm["hidden_size"]) // heads
        grouped = tensor.reshape(kv_heads, groups + 2, head_dim, *tensor.shape[1:])
        query = grouped[:, :groups].reshape(heads * head_dim, *tensor.shape[1:])
        key = grouped[:, groups].reshape(kv_heads * head_dim, *tensor.shape[1:])
        value = grouped[:, groups + 1].reshape(kv_heads * head_dim, *tensor.shape[1:])
        prefix = f"model.language_model.{base}.self_attn."
        return [(prefix + f"q_proj.{kind}", query.contiguous()), (prefix + f"k_proj.{kind}", key.contiguous()),
                (prefix + f"v_proj.{kind}", value.contiguous())]
    for old, new in _INTERNLM2_RENAMES:
        rest = rest.replace(old, new)
    return [("model.language_model." + rest, tensor)]


def converted_tensors(original: OriginalInternVL, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The native (name, tensor) pairs for one tensor of the original checkpoint (module docstring)."""
    if name.startswith("vision_model."):
        return _vision_tensors(original, name, tensor)
    for old, new in _PROJECTOR.items():
        if name.startswith(old):
            return [(new + name[len(old):], tensor)]
    if name.startswith("language_model."):
        rest = name[len("language_model."):]
        if original.family == "internlm2":
            return _internlm2_tensors(original, rest, tensor)
        if rest.startswith("lm_head."):
            return [(rest, tensor)]
        if rest.startswith("model."):
            return [("model.language_model." + rest[len("model."):], tensor)]
    raise UserError(f"--checkpoint {original.path}: weight {name!r} has no place in the native InternVL model "
                    f"(an InternVL variant this conversion does not know); use --model-code remote --trust-remote-code")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, in the index's order when sharded."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"--checkpoint {folder}: no *.safetensors weights to convert (pickle weights: use "
                        f"--model-code remote --trust-remote-code --allow-pickle-weights)")
    return files


def iter_converted_shards(original: OriginalInternVL) -> Iterator[dict[str, torch.Tensor]]:
    """One dict of converted tensors per safetensors shard; tensors are read lazily from the file."""
    from safetensors import safe_open

    for file in weight_files(original.path):
        converted: dict[str, torch.Tensor] = {}
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                for new_name, tensor in converted_tensors(original, name, handle.get_tensor(name)):
                    converted[new_name] = tensor
        yield converted


def _original_has_head(original: OriginalInternVL) -> bool:
    from safetensors import safe_open

    heads = ("language_model.lm_head.weight", "language_model.output.weight")
    for file in weight_files(original.path):
        with safe_open(str(file), framework="pt") as handle:
            if any(name in heads for name in handle.keys()):
                return True
    return False


# ------------------------------------------------------------------------------------------------
# Loading and saving


def empty_native_model(config: Any, dtype: torch.dtype) -> Any:
    """`InternVLForConditionalGeneration` with parameters on the meta device and real buffers (rotary)."""
    from accelerate import init_empty_weights
    from transformers import InternVLForConditionalGeneration

    with init_empty_weights(include_buffers=False):
        model = InternVLForConditionalGeneration._from_config(config, dtype=dtype)
    return model


def load_converted_model(original: OriginalInternVL, image_token_id: int, *, dtype: torch.dtype,
                         device_map: Mapping[str, Any] | None = None) -> Any:
    """The converted native model on `device_map`'s devices (`{"": device}` for one), eval mode.

    Tensors are assigned shard by shard. Every parameter must be filled: a missing one (a checkpoint
    that lacks weights) is a UserError, never a silently random weight.
    """
    from accelerate.utils import set_module_tensor_to_device

    device_map = dict(device_map or {"": "cpu"})
    tied = not _original_has_head(original)
    config = native_config(original, image_token_id, tie_word_embeddings=tied)
    model = empty_native_model(config, dtype)
    expected = {name for name, _ in model.named_parameters()}
    if tied:
        expected.discard("lm_head.weight")
    filled: set[str] = set()
    for shard in iter_converted_shards(original):
        for name, tensor in shard.items():
            if name not in expected:
                raise UserError(f"--checkpoint {original.path}: converted weight {name!r} is not a parameter of the "
                                f"native model: use --model-code remote --trust-remote-code")
            set_module_tensor_to_device(model, name, _device_for(name, device_map), value=tensor, dtype=dtype)
            filled.add(name)
        del shard
    missing = sorted(expected - filled)
    if missing:
        raise UserError(f"--checkpoint {original.path}: the weights lack {len(missing)} tensor(s) of the model, e.g. "
                        f"{missing[:3]}: the folder is incomplete or not an InternVL checkpoint")
    for name, buffer in list(model.named_buffers()):
        set_module_tensor_to_device(model, name, _device_for(name, device_map), value=buffer)
    if tied:
        model.tie_weights()
    _match_vision_norm_eps(model, original)
    model.eval()
    return model


def _device_for(name: str, device_map: Mapping[str, Any]) -> Any:
    """The device of tensor `name` under an accelerate-style map (longest matching module prefix)."""
    best, device = -1, device_map.get("", "cpu")
    for prefix, target in device_map.items():
        if prefix and (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, device = len(prefix), target
    return device


def _match_vision_norm_eps(model: Any, original: OriginalInternVL) -> None:
    """InternViT's q/k norms use the config's `layer_norm_eps`; the native ones are built with 1e-6."""
    eps = float(original.vision_config["layer_norm_eps"])
    for module_name, module in model.model.vision_tower.named_modules():
        if module_name.endswith(("q_norm", "k_norm")) and hasattr(module, "variance_epsilon"):
            module.variance_epsilon = eps
