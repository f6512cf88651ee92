"""Where each module of a model split over several GPUs lives.

Two ways to split one replica over its K GPUs (``--gpus-per-model K``):

* ``split_model`` (``--device-map internvl``): InternVL's layer-count rule, fixed and well known.
  It counts layers, not bytes, and pins the vision model, projector, embeddings, final norm,
  rotary embedding and head on the first GPU.
* the planner (``--device-map planner``, the default): ``plan_device_map`` balances *bytes*
  (weights from accelerate's ``compute_module_sizes`` over a meta-device skeleton, plus the
  runtime bytes of ``estimate_runtime_bytes``) so that every GPU is filled to the same fraction
  of its memory, and says before anything is loaded when a model cannot fit.

Both return a plain ``{module name: device}`` dict for ``from_pretrained(device_map=...)``.
Module names are read from the model (``detect_layout``), never assumed: the same code serves the
transformers-native InternVL (``model.language_model.layers.N``), the remote-code
``InternVLChatModel`` (``language_model.model.layers.N``) and other Hugging Face models.

The dry run (``launch.py --dry-run --assume-gpus G --gpu-memory-gib M``) goes through
``dry_run_plan`` and ``format_plan``, for example::

    replica 0 on GPUs 0-1 (planner): fits
      GPU  layers          weights    runtime      total   capacity  used  modules
      0    0-11 (12)       6.8 GiB    3.9 GiB   10.7 GiB   80.0 GiB   13%  model.vision_tower, ...
      1    12-27 (16)      8.0 GiB    2.9 GiB   10.9 GiB   80.0 GiB   14%  model.language_model.norm, lm_head

(an InternVL3-8B-shaped skeleton, batch 8, 7 tiles, 64 new tokens, bf16; InternVL's rule gives 9 / 19
layers there). Decisions (see the docstrings for the details):

* The last decoder layer is *not* pinned to the first GPU (InternVL pins it; the contract's
  counts leave it on the last GPU). accelerate's hooks move the hidden states to each module's
  device, so the final norm and head on the first GPU receive them from the last GPU. Checked on
  2 real GPUs (H200, torch 2.11, transformers 5.17, tiny InternVL, batch 2 with left padding and
  images, greedy 8 tokens): last layer on GPU 1 with the head on GPU 0, InternVL's pinning, the
  head on GPU 1 and the planner's maps (tied and untied head) all generate exactly what one GPU
  generates. Either way the hidden state crosses back to the first GPU once per step; InternVL's
  pinning only moves that crossing from after layer L-1 to before it.
* With fewer layers than GPUs, the GPUs after the last one that receives a layer stay empty;
  no key ever names a layer that does not exist.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

from launcher.errors import UserError

Device = Union[int, str]
Layout = dict[str, Any]

# The roles of a split: all but ``layers_prefix`` and ``others`` name one module (or None: absent).
ROLES = ("vision", "projector", "embeddings", "layers_prefix", "norm", "rotary", "head")
# ``others``: a tuple of further names (modules or direct parameters) the detector found outside
# the decoder stack and could not name; they go with the vision model on the first device.
OTHERS = "others"

LAYOUTS: dict[str, dict[str, str | None]] = {
    # The original remote-code InternVLChatModel over a Llama / Qwen2 / Phi-3 LLM.
    "internvl_chat": {
        "vision": "vision_model",
        "projector": "mlp1",
        "embeddings": "language_model.model.embed_tokens",
        "layers_prefix": "language_model.model.layers",
        "norm": "language_model.model.norm",
        "rotary": "language_model.model.rotary_emb",
        "head": "language_model.lm_head",
    },
    # The same over InternLM2. Its rotary embedding lives inside each attention block
    # (``layers.N.attention.rotary_emb``), so there is no model-level key for it; InternVL's own
    # split_model emits ``language_model.model.rotary_emb`` anyway, a key that names nothing.
    "internvl_chat_internlm2": {
        "vision": "vision_model",
        "projector": "mlp1",
        "embeddings": "language_model.model.tok_embeddings",
        "layers_prefix": "language_model.model.layers",
        "norm": "language_model.model.norm",
        "rotary": None,
        "head": "language_model.output",
    },
    # transformers-native InternVLForConditionalGeneration (and LLaVA-style models).
    "hf": {
        "vision": "model.vision_tower",
        "projector": "model.multi_modal_projector",
        "embeddings": "model.language_model.embed_tokens",
        "layers_prefix": "model.language_model.layers",
        "norm": "model.language_model.norm",
        "rotary": "model.language_model.rotary_emb",
        "head": "lm_head",
    },
}

# Names the layout detector recognises. The decoder stack is a numbered ModuleList named like
# one of _STACK_NAMES whose parent also holds a token embedding (that tells it apart from a
# vision encoder's blocks, which can outnumber the LLM's layers: Qwen2-VL-7B has 32 vs 28).
_STACK_NAMES = ("layers", "h", "blocks", "layer")
_TOKEN_EMBEDDING_NAMES = ("embed_tokens", "tok_embeddings", "wte", "word_embeddings", "embed_in")
_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm")
_ROTARY_NAMES = ("rotary_emb", "rotary_pos_emb")
_HEAD_NAMES = ("lm_head", "output", "embed_out")
_VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "vision", "image_encoder", "vit")
_PROJECTOR_NAMES = (
    "multi_modal_projector", "mlp1", "mm_projector", "connector", "projector", "merger",
    "vision_proj", "visual_projection", "aligner",
)
_VISION_HINTS = ("vision", "visual", "image", "vit")

GIB = 1 << 30
# Reserved on every GPU by the dry run beyond weights, KV cache and activations: the CUDA context,
# cuBLAS workspaces and the caching allocator's fragmentation (about 0.5-1 GiB measured on H100s).
CUDA_OVERHEAD_BYTES = 1 * GIB


class NoGPUError(UserError, ValueError):
    """No GPU to split a model over (a ValueError too, for callers of InternVL's API)."""


class PlanDoesNotFit(UserError):
    """Some device would need more bytes than it has. ``plan`` is the best plan found anyway."""

    def __init__(self, message: str, plan: Plan | None = None) -> None:
        super().__init__(message)
        self.plan = plan


# --------------------------------------------------------------------------------------------
# InternVL's rule


def layer_counts(num_layers: int, num_devices: int, vit_alpha: float = 0.5) -> list[int]:
    """Decoder layers per device under InternVL's rule (``split_model`` without the names).

    ``share = L / (G - vit_alpha)``; the first device gets ``floor(share * (1 - vit_alpha) + 1/2)``
    (it also runs the vision model, so it takes less), the other ``G - 1`` split the rest evenly,
    earlier ones taking the remainder. Exact rational arithmetic, so no float rounding decides a
    count. Examples: (32, 8) -> 2,5,5,4,4,4,4,4; (80, 8) -> 5,11,11,11,11,11,10,10; (28, 1) -> 28.
    When ``L >= G`` every device after the first gets at least one layer (the first gets at most
    ``round(L / G)``). When ``L < G`` the trailing devices get 0: a device cannot hold part of a layer.
    """
    _check_num_layers(num_layers)
    alpha = _check_vit_alpha(vit_alpha)
    if not isinstance(num_devices, int) or num_devices < 1:
        raise NoGPUError(f"need at least one device to split {num_layers} layers over, got {num_devices!r}")
    share = Fraction(num_layers) / (num_devices - alpha)
    first = min(num_layers, math.floor(share * (1 - alpha) + Fraction(1, 2)))
    if num_devices == 1:
        return [num_layers]
    base, extra = divmod(num_layers - first, num_devices - 1)
    return [first] + [base + 1 if index < extra else base for index in range(num_devices - 1)]


def split_model(
    num_layers: int,
    vit_alpha: float = 0.5,
    devices: Sequence[int] | None = None,
    layout: str | Mapping[str, Any] = "internvl_chat",
) -> dict[str, int]:
    """InternVL's device map: module name -> GPU index (the contract in DESIGN.md).

    ``layout``: ``"internvl_chat"``, ``"internvl_chat_internlm2"``, ``"hf"`` (see ``LAYOUTS``) or a
    mapping from roles (``ROLES``, plus optional ``others``) to module names, such as
    ``detect_layout`` returns. ``devices``: GPU indices in pipeline order (e.g. ``[4, 5, 6, 7]``),
    default every visible GPU. Layer counts follow ``layer_counts``. The key of decoder layer i is
    ``f"{layers_prefix}.{i}"``, exactly once for i in ``0 .. num_layers - 1``. The vision model,
    projector, embeddings, final norm, rotary embedding, head and ``others`` go on ``devices[0]``.

    Unlike InternVL's original: no ghost keys past the last layer, no idle GPU when
    ``num_layers >= len(devices)``, any group of GPUs, and the last decoder layer stays on the GPU
    the rule gives it (InternVL pins it to GPU 0; the hooks move its output to the head's device).

    Raises ``NoGPUError`` when no GPU is visible (or ``devices`` is empty) and ``UserError`` for
    ``vit_alpha`` outside [0, 1), ``num_layers < 1`` or a bad device list.
    """
    roles = resolve_layout(layout)
    device_list = _check_devices(devices if devices is not None else _visible_gpus())
    counts = layer_counts(num_layers, len(device_list), vit_alpha)
    first = device_list[0]
    device_map: dict[str, int] = {}
    for role in ("vision", "projector", "embeddings", "rotary"):
        if roles.get(role):
            device_map[roles[role]] = first
    for name in roles.get(OTHERS, ()):
        device_map[name] = first
    layer_index = 0
    for device, count in zip(device_list, counts):
        for _ in range(count):
            device_map[f"{roles['layers_prefix']}.{layer_index}"] = device
            layer_index += 1
    for role in ("norm", "head"):
        if roles.get(role):
            device_map[roles[role]] = first
    return device_map


def _visible_gpus() -> list[int]:
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise NoGPUError(
            "split_model needs a GPU, but torch.cuda.device_count() is 0: no GPU is visible to this "
            "process. Run on a GPU node (check CUDA_VISIBLE_DEVICES and that this torch build has "
            "CUDA), pass devices=[...] explicitly, or drop --auto / --gpus-per-model to run unsplit."
        )
    return list(range(count))


def _check_num_layers(num_layers: int) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise UserError(f"num_layers must be a positive integer (the LLM's num_hidden_layers), got {num_layers!r}")


def _check_vit_alpha(vit_alpha: float) -> Fraction:
    try:
        value = float(vit_alpha)
    except (TypeError, ValueError):
        raise UserError(f"vit_alpha must be a number in [0, 1), got {vit_alpha!r}") from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise UserError(
            f"vit_alpha must be in [0, 1) (the fraction of a GPU the vision model takes; InternVL "
            f"uses 0.5), got {vit_alpha!r}"
        )
    # Through repr, so 0.1 means one tenth, not the nearest binary float.
    return Fraction(repr(value))


def _check_devices(devices: Iterable[int]) -> list[int]:
    device_list = list(devices)
    if not device_list:
        raise NoGPUError("the list of GPUs to split the model over is empty; name at least one GPU index")
    bad = [d for d in device_list if isinstance(d, bool) or not isinstance(d, int) or d < 0]
    if bad:
        raise UserError(f"GPU indices must be non-negative integers, got {bad} in {device_list}")
    if len(set(device_list)) != len(device_list):
        raise UserError(f"each GPU may appear once in the device list, got {device_list}")
    return device_list


# --------------------------------------------------------------------------------------------
# Layouts


def resolve_layout(layout: str | Mapping[str, Any]) -> Layout:
    """A layout name or role mapping, checked, as a role -> name dict (absent roles omitted)."""
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise UserError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)} (or a role mapping)")
        layout = LAYOUTS[layout]
    if not isinstance(layout, Mapping):
        raise UserError(f"layout must be a name or a mapping from roles to module names, got {type(layout).__name__}")
    unknown = sorted(set(layout) - set(ROLES) - {OTHERS})
    if unknown:
        raise UserError(f"unknown layout roles {unknown}; known roles: {', '.join(ROLES)}, {OTHERS}")
    prefix = layout.get("layers_prefix")
    if not isinstance(prefix, str) or not prefix:
        raise UserError("a layout needs 'layers_prefix', the name of the decoder layers' ModuleList")
    roles: Layout = {role: layout[role] for role in ROLES if layout.get(role)}
    for role, name in roles.items():
        if not isinstance(name, str):
            raise UserError(f"layout role {role!r} must name one module, got {name!r}")
    others = layout.get(OTHERS) or ()
    roles[OTHERS] = (others,) if isinstance(others, str) else tuple(others)
    return roles


def detect_layout(module_names: Iterable[str]) -> Layout:
    """Read a model's roles from its module names (``name for name, _ in model.named_modules()``).

    The decoder stack is the numbered list (``*.layers.N``, ``*.h.N``, ``*.blocks.N``, ``*.layer.N``)
    whose parent holds a token embedding, the longest if several; failing that, the longest list not
    under a vision module. Everything else is covered by the siblings of the stack's ancestors
    (for native InternVL: ``lm_head``; ``model.vision_tower``, ``model.multi_modal_projector``;
    ``model.language_model.{embed_tokens,norm,rotary_emb}``), each named by role when recognised
    and otherwise listed under ``others``. Works for native InternVL, remote-code InternVLChatModel
    (``tok_embeddings``/``output`` for InternLM2) and plain causal LMs. Raises ``UserError`` when
    no decoder stack is found.
    """
    names = [name for name in module_names if name]
    stack_pattern = re.compile(r"^(?P<prefix>(?:.+\.)?(?:%s))\.(?P<index>\d+)$" % "|".join(_STACK_NAMES))
    stacks: dict[str, set[int]] = {}
    for name in names:
        match = stack_pattern.match(name)
        if match:
            stacks.setdefault(match["prefix"], set()).add(int(match["index"]))
    if not stacks:
        raise UserError(
            "found no decoder layers (a numbered *.layers / *.h / *.blocks list) among the model's "
            "modules; pass an explicit layout mapping (roles: " + ", ".join(ROLES) + ")"
        )

    def parent(name: str) -> str:
        return name.rpartition(".")[0]

    def children(name: str) -> list[str]:
        start = f"{name}." if name else ""
        return [n for n in names if n.startswith(start) and "." not in n[len(start):]]

    def has_token_embedding(prefix: str) -> bool:
        return any(c.rpartition(".")[2] in _TOKEN_EMBEDDING_NAMES for c in children(parent(prefix)))

    def under_vision(prefix: str) -> bool:
        return any(hint in segment for segment in prefix.lower().split(".") for hint in _VISION_HINTS)

    candidates = [p for p in stacks if has_token_embedding(p)] or [p for p in stacks if not under_vision(p)]
    if not candidates:
        raise UserError(
            f"found only vision-encoder layer lists ({', '.join(sorted(stacks))}), no LLM decoder layers; "
            "pass an explicit layout mapping"
        )
    # Longest list wins; ties go to the one defined later (the LLM follows the vision model).
    order = {name: index for index, name in enumerate(names)}
    prefix = max(candidates, key=lambda p: (len(stacks[p]), order.get(p, -1)))

    # The modules outside the stack: the other children of each of the stack's ancestors.
    chain = []
    node = prefix
    while node:
        chain.append(node)
        node = parent(node)
    chain.append("")
    cover: list[str] = []
    for child, ancestor in zip(chain, chain[1:]):
        cover.extend(c for c in children(ancestor) if c != child)
    stack_parent = parent(prefix)
    roles: Layout = {"layers_prefix": prefix}
    others: list[str] = []
    for name in sorted(cover, key=lambda n: order[n]):
        leaf = name.rpartition(".")[2]
        in_stack_parent = parent(name) == stack_parent
        if in_stack_parent and leaf in _TOKEN_EMBEDDING_NAMES and "embeddings" not in roles:
            roles["embeddings"] = name
        elif in_stack_parent and leaf in _NORM_NAMES and "norm" not in roles:
            roles["norm"] = name
        elif in_stack_parent and leaf in _ROTARY_NAMES and "rotary" not in roles:
            roles["rotary"] = name
        elif leaf in _HEAD_NAMES and "head" not in roles:
            roles["head"] = name
        elif leaf in _VISION_NAMES and "vision" not in roles:
            roles["vision"] = name
        elif leaf in _PROJECTOR_NAMES and "projector" not in roles:
            roles["projector"] = name
        else:
            others.append(name)
    roles[OTHERS] = tuple(others)
    return roles


def count_layers(module_names: Iterable[str], layers_prefix: str) -> int:
    """How many decoder layers ``layers_prefix.0 .. layers_prefix.{n-1}`` the names hold.

    Raises ``UserError`` when there are none or the numbering has gaps (then no split is safe).
    """
    pattern = re.compile(rf"^{re.escape(layers_prefix)}\.(\d+)$")
    indices = {int(m[1]) for m in map(pattern.match, module_names) if m}
    if not indices:
        raise UserError(f"the model has no modules named {layers_prefix}.N; is the layout right?")
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        raise UserError(f"decoder layers {layers_prefix}.N are not numbered 0..{max(indices)}: missing {missing[:10]}")
    return len(indices)


def layout_for_model(model: Any) -> Layout:
    """``detect_layout`` over a model, plus parameters owned directly by the stack's ancestors.

    Such parameters (LLaVA-NeXT's ``model.image_newline``) belong to no child module, so only the
    model itself can name them; they join ``others`` (accelerate accepts parameter names as keys).
    """
    roles = detect_layout(name for name, _ in model.named_modules())
    ancestors = [""]
    parts = roles["layers_prefix"].split(".")
    ancestors += [".".join(parts[:i]) for i in range(1, len(parts))]
    direct = []
    for ancestor in ancestors:
        module = model.get_submodule(ancestor)
        for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            direct.append(f"{ancestor}.{name}" if ancestor else name)
    roles[OTHERS] = tuple(roles[OTHERS]) + tuple(direct)
    return roles


# --------------------------------------------------------------------------------------------
# Runtime bytes (KV cache and activations)


@dataclass(frozen=True)
class RuntimeBytes:
    """Bytes a generate call needs beyond the weights (see ``estimate_runtime_bytes``)."""

    kv_cache_per_layer: int
    num_layers: int
    vision_activations: int
    llm_activations: int
    logits: int

    @property
    def total(self) -> int:
        """What one GPU holding the whole model needs beyond its weights."""
        return self.kv_cache_per_layer * self.num_layers + self.vision_activations + self.llm_activations + self.logits


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _sub_config(config: Any, names: Sequence[str]) -> Any:
    for name in names:
        sub = _get(config, name)
        if sub is not None:
            return sub
    return None


def _first(value: Any) -> int:
    # Native configs store image_size / patch_size as [h, w]; remote-code ones as one int.
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def image_tokens_per_tile(config: Any) -> int:
    """LLM tokens one image tile becomes: ``image_seq_length`` when the config has it, else
    ``(image_size / patch_size)^2 * downsample_ratio^2`` (InternVL: 448 / 14 -> 1024 -> 256); 0
    for a text-only model."""
    if _get(config, "image_seq_length"):
        return int(_get(config, "image_seq_length"))
    if _get(config, "num_image_token"):
        return int(_get(config, "num_image_token"))
    vision = _sub_config(config, ("vision_config",))
    if vision is None:
        return 0
    image_size = _get(config, "force_image_size") or _get(vision, "image_size")
    patch = _get(vision, "patch_size")
    if not image_size or not patch:
        return 0
    ratio = float(_get(config, "downsample_ratio", 1.0) or 1.0)
    return int((_first(image_size) // _first(patch)) ** 2 * ratio**2)


def estimate_runtime_bytes(
    config: Any,
    batch_size: int,
    tiles_per_item: int,
    max_new_tokens: int,
    dtype_bytes: int,
    prompt_tokens: int = 64,
) -> RuntimeBytes:
    """Runtime bytes of one generate call, split by where they live.

    With ``t = image_tokens_per_tile * tiles + prompt_tokens`` (prefill) and ``T = t + max_new_tokens``:

    * KV cache, per decoder layer (on that layer's GPU): ``2 * kv_heads * head_dim * T * batch * dtype_bytes``.
    * vision activations (first GPU): ``batch * tiles * (patches + 1) * (6 * vision_hidden +
      vision_intermediate) * dtype_bytes``, one vision layer's live tensors (input, residual, q/k/v,
      output and the MLP's hidden layer; SDPA never materialises the attention matrix, eager
      attention would add ``heads * (patches + 1)^2`` per tile).
    * LLM activations (each GPU with layers, one layer at a time): ``batch * t * (4 * hidden +
      2 * intermediate) * dtype_bytes`` (gate and up projections are both live in prefill).
    * logits (the head's GPU): ``2 * batch * vocab * 4`` (float32 logits of the last position and
      one processed copy; transformers' generate keeps only the last position).
    """
    for name, value in (("batch_size", batch_size), ("tiles_per_item", tiles_per_item), ("dtype_bytes", dtype_bytes)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    text = _sub_config(config, ("text_config", "llm_config", "language_config")) or config
    num_layers = int(_get(text, "num_hidden_layers"))
    hidden = int(_get(text, "hidden_size"))
    heads = int(_get(text, "num_attention_heads"))
    kv_heads = int(_get(text, "num_key_value_heads") or heads)
    head_dim = int(_get(text, "head_dim") or hidden // heads)
    intermediate = int(_get(text, "intermediate_size") or 4 * hidden)
    vocab = int(_get(text, "vocab_size") or _get(config, "vocab_size") or 0)

    image_tokens = image_tokens_per_tile(config) * tiles_per_item
    prefill_tokens = image_tokens + prompt_tokens
    total_tokens = prefill_tokens + max_new_tokens
    kv_per_layer = 2 * kv_heads * head_dim * total_tokens * batch_size * dtype_bytes

    vision_bytes = 0
    vision = _sub_config(config, ("vision_config",))
    if vision is not None and image_tokens:
        image_size = _get(config, "force_image_size") or _get(vision, "image_size")
        patches = (_first(image_size) // _first(_get(vision, "patch_size"))) ** 2 + 1
        vision_hidden = int(_get(vision, "hidden_size"))
        vision_intermediate = int(_get(vision, "intermediate_size") or 4 * vision_hidden)
        vision_bytes = batch_size * tiles_per_item * patches * (6 * vision_hidden + vision_intermediate) * dtype_bytes
    llm_bytes = batch_size * prefill_tokens * (4 * hidden + 2 * intermediate) * dtype_bytes
    logits_bytes = 2 * batch_size * vocab * 4
    return RuntimeBytes(kv_per_layer, num_layers, vision_bytes, llm_bytes, logits_bytes)


def estimate_headroom(
    config: Any,
    batch_size: int,
    tiles_per_item: int,
    max_new_tokens: int,
    dtype_bytes: int,
    prompt_tokens: int = 64,
) -> int:
    """Bytes beyond the weights one GPU holding the whole model needs for a generate call.

    ``2 * layers * kv_heads * head_dim * tokens * batch * dtype_bytes`` (KV cache; ``tokens =
    image_tokens_per_tile * tiles + prompt_tokens + max_new_tokens``) plus vision activations, LLM
    prefill activations and logits; ``estimate_runtime_bytes`` gives each term and its formula.
    """
    return estimate_runtime_bytes(config, batch_size, tiles_per_item, max_new_tokens, dtype_bytes, prompt_tokens).total


def headroom_per_device(runtime: RuntimeBytes, devices: Sequence[int]) -> dict[int, int]:
    """Bytes to reserve on each GPU of a split, besides each layer's KV cache (``per_layer_bytes``).

    Every GPU: LLM activations (each runs its layers on the full prefill) and ``CUDA_OVERHEAD_BYTES``.
    The first GPU also: vision activations and logits (where a tied head sits; an untied head sits
    on the last GPU, but the logits are megabytes: ``2 * batch * vocab * 4``).
    """
    headroom = {d: runtime.llm_activations + CUDA_OVERHEAD_BYTES for d in devices}
    headroom[devices[0]] += runtime.vision_activations + runtime.logits
    return headroom


# --------------------------------------------------------------------------------------------
# The skeleton


def build_skeleton(checkpoint: str | Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's model on the meta device, from its config only (no weights read).

    Tries AutoModelForImageTextToText, then AutoModelForCausalLM (remote-code InternVLChatModel
    registers there), then AutoModel, under accelerate's ``init_empty_weights``; ties the weights so
    that a tied ``lm_head`` shares the embeddings' parameter (and is counted once).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise UserError(f"--checkpoint {checkpoint}: no config.json there; expected a Hugging Face model folder")
    try:
        if trust_remote_code:
            # The folder's own classes, repaired for transformers 5.x as loading does (launcher/remote_code.py):
            # the Auto classes below then get the repaired ones.
            from launcher.remote_code import prepare_remote_code

            prepare_remote_code(folder, json.loads((folder / "config.json").read_text()))
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise UserError(f"--checkpoint {checkpoint} ships its own model code: add --trust-remote-code") from None
        raise UserError(f"--checkpoint {checkpoint}: cannot read its config.json: {error}") from None
    problems = []
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM, AutoModel):
        try:
            with init_empty_weights():
                model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
            break
        except ValueError as error:  # "Unrecognized configuration class ..." for this auto class
            problems.append(f"{auto_class.__name__}: {str(error).splitlines()[0]}")
    else:
        raise UserError(f"--checkpoint {checkpoint}: no model class for its config: " + "; ".join(problems))
    model.tie_weights()
    return model


# --------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class DevicePlan:
    """What one device holds under a plan."""

    device: Device
    modules: tuple[str, ...]  # keys other than decoder layers
    layers: tuple[int, ...]  # decoder layer indices
    weight_bytes: int
    runtime_bytes: int  # headroom reserved on the device plus the KV cache of its layers
    capacity_bytes: int | None  # None: unknown (no limit checked)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.runtime_bytes

    @property
    def fits(self) -> bool:
        return self.capacity_bytes is None or self.total_bytes <= self.capacity_bytes


@dataclass(frozen=True)
class Plan:
    """A device map with the bytes behind it, for one replica."""

    device_map: dict[str, Device]
    devices: tuple[DevicePlan, ...]
    method: str  # "planner" or "internvl"
    replica_index: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return all(device.fits for device in self.devices)

    @property
    def over_capacity(self) -> tuple[DevicePlan, ...]:
        return tuple(device for device in self.devices if not device.fits)


def _gib(value: int | None) -> str:
    """Bytes for people: GiB for real models, smaller units so tiny test models show non-zero."""
    if value is None:
        return "?"
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _label(device: Device) -> str:
    return f"GPU {device}" if isinstance(device, int) else repr(device)


def _ranges(indices: Sequence[int]) -> str:
    if not indices:
        return "-"
    spans, start, previous = [], indices[0], indices[0]
    for index in list(indices[1:]) + [None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        spans.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return f"{','.join(spans)} ({len(indices)})"


def format_plan(plan: Plan) -> str:
    """The dry run's table: per device its layers, bytes (weights + runtime) against capacity, modules."""
    devices = ",".join(str(d.device) for d in plan.devices)
    if all(isinstance(d.device, int) for d in plan.devices) and len(plan.devices) > 1:
        ids = [d.device for d in plan.devices]
        if ids == list(range(ids[0], ids[-1] + 1)):
            devices = f"{ids[0]}-{ids[-1]}"
    verdict = "fits" if plan.fits else "DOES NOT FIT on " + ", ".join(_label(d.device) for d in plan.over_capacity)
    lines = [f"replica {plan.replica_index} on GPUs {devices} ({plan.method}): {verdict}"]
    lines.append(f"  {'GPU':<4} {'layers':<12} {'weights':>10} {'runtime':>10} {'total':>10} {'capacity':>10} "
                 f"{'used':>5}  modules")
    for device in plan.devices:
        used = "" if not device.capacity_bytes else f"{100 * device.total_bytes / device.capacity_bytes:.0f}%"
        mark = "" if device.fits else "  <- over capacity"
        lines.append(
            f"  {str(device.device):<4} {_ranges(device.layers):<12} {_gib(device.weight_bytes):>10} "
            f"{_gib(device.runtime_bytes):>10} {_gib(device.total_bytes):>10} {_gib(device.capacity_bytes):>10} "
            f"{used:>5}  {', '.join(device.modules) or '-'}{mark}"
        )
    lines.extend(f"  note: {note}" for note in plan.notes)
    return "\n".join(lines)


def _does_not_fit(plan: Plan) -> PlanDoesNotFit:
    parts = [
        f"{_label(d.device)} needs {_gib(d.total_bytes)} (weights {_gib(d.weight_bytes)} + runtime "
        f"{_gib(d.runtime_bytes)}) but has {_gib(d.capacity_bytes)}"
        for d in plan.over_capacity
    ]
    return PlanDoesNotFit(
        "the model does not fit: " + "; ".join(parts) + ". Use more GPUs per replica (--gpus-per-model), "
        "a smaller --batch-size or --max-num, or --load-in-8bit / --load-in-4bit.\n" + format_plan(plan),
        plan,
    )


def summarise_plan(
    model: Any,
    device_map: Mapping[str, Device],
    devices: Sequence[Device],
    max_memory: Mapping[Device, int] | None = None,
    headroom: Mapping[Device, int] | None = None,
    per_layer_bytes: int = 0,
    layout: str | Mapping[str, Any] | None = None,
    method: str = "internvl",
    dtype: Any = None,
    replica_index: int = 0,
) -> Plan:
    """The bytes behind any device map (e.g. ``split_model``'s) on ``model``, as a ``Plan``."""
    from accelerate.utils import compute_module_sizes

    roles = resolve_layout(layout) if layout is not None else layout_for_model(model)
    sizes = compute_module_sizes(model, dtype=dtype)
    return _summarise(device_map, sizes, roles["layers_prefix"], devices, max_memory, headroom, per_layer_bytes,
                      method, replica_index)


def _summarise(
    device_map: Mapping[str, Device],
    sizes: Mapping[str, int],
    layers_prefix: str,
    devices: Sequence[Device],
    max_memory: Mapping[Device, int] | None,
    headroom: Mapping[Device, int] | None,
    per_layer_bytes: int,
    method: str,
    replica_index: int,
    notes: Sequence[str] = (),
) -> Plan:
    layer_pattern = re.compile(rf"^{re.escape(layers_prefix)}\.(\d+)$")
    modules: dict[Device, list[str]] = {d: [] for d in devices}
    layers: dict[Device, list[int]] = {d: [] for d in devices}
    weights: dict[Device, int] = {d: 0 for d in devices}
    for key, device in device_map.items():
        modules.setdefault(device, [])
        layers.setdefault(device, [])
        weights[device] = weights.get(device, 0) + sizes.get(key, 0)
        match = layer_pattern.match(key)
        if match:
            layers[device].append(int(match[1]))
        else:
            modules[device].append(key)
    plans = []
    for device in modules:
        runtime = (headroom or {}).get(device, 0) + per_layer_bytes * len(layers[device])
        capacity = None if max_memory is None else max_memory.get(device)
        plans.append(DevicePlan(device, tuple(modules[device]), tuple(sorted(layers[device])), weights[device],
                                runtime, capacity))
    return Plan(dict(device_map), tuple(plans), method, replica_index, tuple(notes))


def _partition_layers(
    layer_bytes: Sequence[int],
    fixed_bytes: Sequence[int],
    capacity: Sequence[int],
    tail_bytes: int,
    enforce_capacity: bool,
) -> list[int] | None:
    """Contiguous layer counts per device minimising sum(load^2 / capacity), i.e. equal fill.

    ``load = fixed + its layers' bytes (+ tail_bytes on the device with the last layer)``. Devices
    after the first get at least one layer while layers remain for them (no idle GPU). Dynamic
    programming over (device, layers placed): O(G * L^2), milliseconds for 8 GPUs x 126 layers.
    Returns None when no partition keeps every load within capacity (``enforce_capacity``).
    """
    num_devices, num_layers = len(fixed_bytes), len(layer_bytes)
    prefix = [0]
    for size in layer_bytes:
        prefix.append(prefix[-1] + size)
    infinity = float("inf")
    best = [[infinity] * (num_layers + 1) for _ in range(num_devices + 1)]
    came_from = [[0] * (num_layers + 1) for _ in range(num_devices + 1)]
    best[0][0] = 0.0
    for device in range(num_devices):
        minimum = 1 if 1 <= device <= num_layers else 0
        for start in range(num_layers + 1):
            if best[device][start] == infinity:
                continue
            for end in range(start + minimum, num_layers + 1):
                load = fixed_bytes[device] + prefix[end] - prefix[start]
                if end == num_layers and end > start:
                    load += tail_bytes
                if enforce_capacity and load > capacity[device]:
                    break  # loads only grow with more layers
                cost = best[device][start] + load * load / capacity[device]
                if cost < best[device + 1][end]:
                    best[device + 1][end] = cost
                    came_from[device + 1][end] = start
    if best[num_devices][num_layers] == infinity:
        return None
    counts, end = [], num_layers
    for device in range(num_devices, 0, -1):
        start = came_from[device][end]
        counts.append(end - start)
        end = start
    return counts[::-1]


def _head_tied_to_embeddings(model: Any, roles: Layout) -> bool:
    """Whether the head shares a parameter object with the embeddings (after ``tie_weights()``)."""
    head, embeddings = roles.get("head"), roles.get("embeddings")
    if not head or not embeddings:
        return False
    embedding_parameters = {id(p) for p in model.get_submodule(embeddings).parameters()}
    return any(id(p) in embedding_parameters for p in model.get_submodule(head).parameters())


def make_plan(
    model: Any,
    devices: Sequence[int],
    max_memory: Mapping[int, int] | None = None,
    headroom: Mapping[int, int] | None = None,
    layout: str | Mapping[str, Any] | None = None,
    no_split_module_classes: Sequence[str] | None = None,
    per_layer_bytes: int = 0,
    dtype: Any = None,
    replica_index: int = 0,
) -> Plan:
    """The planner's ``Plan``; ``plan_device_map`` returns its ``device_map``. Raises ``PlanDoesNotFit``."""
    from accelerate.utils import compute_module_sizes

    device_list = _check_devices(devices)
    if max_memory is None:
        max_memory = _free_gpu_memory(device_list)
    missing = [d for d in device_list if d not in max_memory]
    if missing:
        raise UserError(f"max_memory names no capacity for GPUs {missing} (it has {sorted(max_memory)})")
    headroom = {d: int((headroom or {}).get(d, 0)) for d in device_list}
    capacity = [int(max_memory[d]) for d in device_list]
    if any(c <= 0 for c in capacity):
        raise UserError(f"max_memory must be positive bytes per GPU, got {dict(max_memory)}")

    try:
        roles = resolve_layout(layout) if layout is not None else layout_for_model(model)
    except UserError:
        if layout is not None:
            raise
        return _accelerate_plan(model, device_list, max_memory, headroom, no_split_module_classes, dtype, replica_index)
    names = [name for name, _ in model.named_modules()]
    num_layers = count_layers(names, roles["layers_prefix"])
    sizes = compute_module_sizes(model, dtype=dtype)

    tied = _head_tied_to_embeddings(model, roles)
    # The first device: vision model, projector, embeddings, rotary embedding (computed before the
    # first layer) and whatever else is outside the stack. Norm and head join it when the head
    # shares the embeddings' weight; otherwise they follow the last layer (no extra hop, and the
    # head's bytes, up to 2 GiB for a 128k vocabulary, land where they balance).
    first_roles = ["vision", "projector", "embeddings", "rotary"] + (["norm", "head"] if tied else [])
    tail_roles = [] if tied else ["norm", "head"]
    first_names = [roles[r] for r in first_roles if roles.get(r)] + list(roles[OTHERS])
    tail_names = [roles[r] for r in tail_roles if roles.get(r)]
    layer_names = [f"{roles['layers_prefix']}.{i}" for i in range(num_layers)]
    layer_bytes = [sizes.get(name, 0) + per_layer_bytes for name in layer_names]
    fixed = [headroom[d] for d in device_list]
    fixed[0] += sum(sizes.get(name, 0) for name in first_names)
    tail_bytes = sum(sizes.get(name, 0) for name in tail_names)

    counts = _partition_layers(layer_bytes, fixed, capacity, tail_bytes, enforce_capacity=True)
    fits = counts is not None
    if counts is None:  # the best plan regardless of capacity, to show what does not fit
        counts = _partition_layers(layer_bytes, fixed, capacity, tail_bytes, enforce_capacity=False)
    device_map: dict[str, Device] = {name: device_list[0] for name in first_names}
    layer_index, tail_device = 0, device_list[0]
    for device, count in zip(device_list, counts):
        for _ in range(count):
            device_map[layer_names[layer_index]] = device
            layer_index += 1
            tail_device = device
    for name in tail_names:
        device_map[name] = tail_device
    notes = []
    if num_layers < len(device_list) - 1:
        notes.append(f"{num_layers} decoder layers cannot use {len(device_list)} GPUs: the last ones stay empty")
    plan = _summarise(device_map, sizes, roles["layers_prefix"], device_list, max_memory, headroom,
                      per_layer_bytes, "planner", replica_index, notes)
    if not fits or not plan.fits:
        raise _does_not_fit(plan)
    return plan


def plan_device_map(
    model: Any,
    devices: list[int],
    max_memory: dict[int, int] | None = None,
    headroom: dict[int, int] | None = None,
    layout: str | Mapping[str, Any] | None = None,
    no_split_module_classes: Sequence[str] | None = None,
    per_layer_bytes: int = 0,
    dtype: Any = None,
) -> dict[str, Device]:
    """A device map that fills every GPU to the same fraction of its memory (bytes, not layer counts).

    ``model``: usually ``build_skeleton``'s meta-device model (call ``tie_weights()`` on your own).
    ``max_memory``: usable bytes per GPU (default: free memory now). ``headroom``: bytes to keep free
    per GPU (activations, CUDA context); ``per_layer_bytes``: runtime bytes each decoder layer adds to
    its GPU (its KV cache, ``estimate_runtime_bytes(...).kv_cache_per_layer``); ``dtype``: the dtype
    the weights will be loaded in (sizes follow it). Layers stay contiguous and in order; the vision
    model, projector, embeddings and rotary embedding go on ``devices[0]``; the final norm and head
    go there too when the head is tied to the embeddings, else with the last layer. Weight sizes
    come from accelerate's ``compute_module_sizes``; the split itself is ours rather than
    ``infer_auto_device_map``'s, which fills GPUs greedily in definition order, puts the head on the
    last GPU and cannot pin modules. Models without a recognisable decoder stack fall back to
    ``get_balanced_memory`` + ``infer_auto_device_map`` (with ``no_split_module_classes``, default
    the model's ``_no_split_modules``). Raises ``PlanDoesNotFit`` naming each GPU over capacity.
    """
    return make_plan(model, devices, max_memory, headroom, layout, no_split_module_classes, per_layer_bytes,
                     dtype).device_map


def _free_gpu_memory(devices: Sequence[int]) -> dict[int, int]:
    import torch

    visible = torch.cuda.device_count()
    absent = [d for d in devices if d >= visible]
    if absent:
        raise NoGPUError(
            f"cannot plan on GPUs {absent}: this process sees {visible} GPU(s). Pass max_memory to plan "
            "for GPUs elsewhere (the dry run's --assume-gpus / --gpu-memory-gib)."
        )
    return {d: torch.cuda.mem_get_info(d)[0] for d in devices}


def _accelerate_plan(
    model: Any,
    devices: list[int],
    max_memory: Mapping[int, int],
    headroom: Mapping[int, int],
    no_split_module_classes: Sequence[str] | None,
    dtype: Any,
    replica_index: int,
) -> Plan:
    from accelerate.utils import compute_module_sizes, get_balanced_memory, infer_auto_device_map

    budgets = {d: max(0, int(max_memory[d]) - headroom[d]) for d in devices}
    classes = list(no_split_module_classes or getattr(model, "_no_split_modules", None) or [])
    # "cpu": 0 so that anything that does not fit shows up as a "cpu"/"disk" entry, never silently.
    balanced = get_balanced_memory(model, max_memory={**budgets, "cpu": 0}, no_split_module_classes=classes,
                                   dtype=dtype)
    device_map = infer_auto_device_map(model, max_memory={**balanced, "cpu": 0, "disk": 0},
                                       no_split_module_classes=classes, dtype=dtype)
    sizes = compute_module_sizes(model, dtype=dtype)
    # What accelerate sends to "cpu" or "disk" did not fit on the GPUs: capacity 0 marks it so.
    capacities = {**max_memory, **{d: 0 for d in device_map.values() if d not in devices}}
    plan = _summarise(device_map, sizes, "\0", devices, capacities, headroom, 0, "planner (accelerate)",
                      replica_index, ("no decoder stack recognised: accelerate's infer_auto_device_map split it",))
    if not plan.fits:
        raise _does_not_fit(plan)
    return plan


# --------------------------------------------------------------------------------------------
# Checking a map against a model


def check_device_map(
    device_map: Mapping[str, Any],
    model: Any,
    allowed_devices: Iterable[Device] | None = None,
) -> None:
    """Raise ``UserError`` listing every problem of ``device_map`` for ``model`` before loading.

    Problems: keys that name no module, parameter or buffer of the model (transformers 5 ignores
    them silently on the CPU); parameters and buffers no key covers; devices not in
    ``allowed_devices`` (default: the GPUs this process sees, plus "cpu" and "disk"), i.e. a device
    map that would put a module on a GPU that does not exist. ``"cuda:N"`` counts as GPU N.
    """
    if allowed_devices is None:
        import torch

        allowed = set(range(torch.cuda.device_count())) | {"cpu", "disk"}
    else:
        allowed = {_normalise_device(d) for d in allowed_devices}
    known = {name for name, _ in model.named_modules()}
    tensors = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    tensors += [name for name, _ in model.named_buffers(remove_duplicate=False)]
    known.update(tensors)

    problems = []
    unknown = [key for key in device_map if key not in known]
    if unknown:
        problems.append(f"{len(unknown)} key(s) name no module of the model: {_listing(unknown)}")
    keys = set(device_map)
    uncovered = []
    for name in tensors:
        parts = name.split(".")
        if "" not in keys and not any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1)):
            uncovered.append(name)
    if uncovered:
        problems.append(f"{len(uncovered)} parameter(s)/buffer(s) no key covers: {_listing(uncovered)}")
    misplaced = [f"{key} -> {device!r}" for key, device in device_map.items()
                 if _normalise_device(device) not in allowed]
    if misplaced:
        gpus = sorted(d for d in allowed if isinstance(d, int))
        problems.append(
            f"a device map that would put a module on a GPU that does not exist (this process may use GPUs "
            f"{gpus or 'none'} and {sorted(str(d) for d in allowed if not isinstance(d, int))}): {_listing(misplaced)}"
        )
    if problems:
        raise UserError("invalid device map: " + "; ".join(problems))


def _normalise_device(device: Any) -> Any:
    if isinstance(device, bool):
        return device  # never allowed: True is not GPU 1
    if isinstance(device, int):
        return device
    text = str(device)
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    if text == "cuda":
        return 0
    return text


def _listing(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# The dry run


_DTYPES_BY_BYTES = {1: "int8", 2: "bfloat16", 4: "float32"}


def dry_run_plan(
    checkpoint: str | Path,
    gpus_per_model: int,
    assume_gpus: int,
    gpu_memory_bytes: int,
    batch_size: int,
    tiles: int,
    max_new_tokens: int,
    dtype_bytes: int,
    trust_remote_code: bool = False,
    method: str = "planner",
    prompt_tokens: int = 64,
    skeleton: Any = None,
) -> list[Plan]:
    """One plan per replica for ``assume_gpus`` GPUs of ``gpu_memory_bytes`` each; loads no weights.

    Replicas: ``assume_gpus // gpus_per_model``, replica r on GPUs ``r*K .. r*K+K-1``. Runtime bytes
    from ``estimate_runtime_bytes``: each layer's KV cache on its GPU; LLM activations and
    ``CUDA_OVERHEAD_BYTES`` on every GPU; vision activations and logits on the first. ``method``:
    ``"planner"`` (``make_plan``) or ``"internvl"`` (``split_model`` over the detected layout).
    Raises ``PlanDoesNotFit`` (with the formatted plan in its message) when a GPU is over capacity.
    ``skeleton``: the meta-device model to plan, when it is not the folder's own (a converted original InternVL).
    """
    import torch

    if method not in ("planner", "internvl"):
        raise UserError(f"--device-map must be 'planner' or 'internvl', got {method!r}")
    if not isinstance(gpus_per_model, int) or gpus_per_model < 1:
        raise UserError(f"--gpus-per-model must be a positive integer, got {gpus_per_model!r}")
    if not isinstance(assume_gpus, int) or assume_gpus < gpus_per_model:
        raise UserError(f"--assume-gpus {assume_gpus} cannot hold one replica of --gpus-per-model {gpus_per_model}")
    if dtype_bytes not in _DTYPES_BY_BYTES:
        raise UserError(f"dtype_bytes must be one of {sorted(_DTYPES_BY_BYTES)}, got {dtype_bytes!r}")
    if gpu_memory_bytes <= 0:
        raise UserError(f"--gpu-memory-gib must be positive, got {gpu_memory_bytes / GIB:g} GiB")
    model = skeleton if skeleton is not None else build_skeleton(checkpoint, trust_remote_code=trust_remote_code)
    dtype = getattr(torch, _DTYPES_BY_BYTES[dtype_bytes])
    runtime = estimate_runtime_bytes(model.config, batch_size, tiles, max_new_tokens, dtype_bytes, prompt_tokens)
    roles = layout_for_model(model)
    num_layers = count_layers([name for name, _ in model.named_modules()], roles["layers_prefix"])
    replicas = assume_gpus // gpus_per_model
    notes = []
    if assume_gpus % gpus_per_model:
        idle = assume_gpus % gpus_per_model
        notes.append(f"{idle} of {assume_gpus} GPUs stay idle: not a multiple of {gpus_per_model}")
    plans = []
    for replica_index in range(replicas):
        devices = list(range(replica_index * gpus_per_model, (replica_index + 1) * gpus_per_model))
        max_memory = {d: gpu_memory_bytes for d in devices}
        headroom = headroom_per_device(runtime, devices)
        if method == "planner":
            plan = make_plan(model, devices, max_memory, headroom, roles, None, runtime.kv_cache_per_layer, dtype,
                             replica_index)
        else:
            device_map = split_model(num_layers, devices=devices, layout=roles)
            plan = summarise_plan(model, device_map, devices, max_memory, headroom, runtime.kv_cache_per_layer,
                                  roles, "internvl", dtype, replica_index)
            if not plan.fits:
                raise _does_not_fit(plan)
        plans.append(Plan(plan.device_map, plan.devices, plan.method, replica_index, plan.notes + tuple(notes)))
    return plans
