"""Loading a checkpoint onto this process's devices, InternVL-compatible.

`load_model_and_tokenizer(args)` is the drop-in for InternVL's function of the same name (same
attributes: `checkpoint`, `auto`, `load_in_8bit`, `load_in_4bit`); `load_adapter(args, devices)` is
what the runner calls: the model, its tokenizer / processor, and the adapter that turns items into
text (see `launcher/adapters.py`).

Optional attributes of `args` (read with `getattr`, so InternVL's own namespace works unchanged):

| attribute | default | meaning |
| --- | --- | --- |
| `dtype` | None: bfloat16 on GPU, float32 on CPU | "bfloat16", "float16", "float32" or a torch.dtype |
| `gpus_per_model` | 1 | GPUs of one replica (ignored with `auto`: all visible GPUs) |
| `device_map_method` | "planner" | K > 1 GPUs: `device_map.plan_device_map` (bytes) or "internvl" (`split_model`) |
| `trust_remote_code` | False | needed for checkpoints whose config.json has an `auto_map` |
| `model_code` | "auto" | original InternVL folders: "auto" / "native" (converted) or "remote" (`launcher/model_code.py`) |
| `allow_pickle_weights` | False | needed for `.bin` / `.pt` / `.pth` weights without safetensors |
| `devices` | see below | list of torch.device of this process |
| `dynamic`, `max_num` | False, 6 | InternVL's tiling (used by the adapters) |
| `batch_size`, `max_new_tokens` | 16, 64 | only to size the headroom of a multi-GPU plan |

Devices when `devices` is not given: with `auto`, every visible GPU (InternVL's `--auto`); else
`gpus_per_model` GPUs starting at the current CUDA device; with no GPU, the CPU.

What is loaded:

* A transformers-native checkpoint (InternVL `-hf` and any model of `AutoModelForImageTextToText`) ->
  that class; a text-only model -> `AutoModelForCausalLM`.
* An original InternVL folder (`InternVLChatModel`, e.g. OpenGVLab/InternVL3-8B as downloaded) -> converted
  at load to `InternVLForConditionalGeneration` without running its code (`launcher/internvl_conversion.py`,
  the choice in `launcher/model_code.py`); with `model_code="remote"`, or where it cannot be converted,
  its own code as below.
* A remote-code checkpoint (config.json has `auto_map`) -> `AutoModel` (InternVL's own choice), only with
  `trust_remote_code`.
* Weights from safetensors; pickle files only with `allow_pickle_weights` (unpickling a file can run
  arbitrary code, so a downloaded `.bin` is as trusted as a script).
* 8-bit / 4-bit through `BitsAndBytesConfig` (4-bit: transformers' defaults, fp4, with the compute
  dtype set to the run's dtype). bitsandbytes is imported only when asked for.
* One device: `device_map={"": device}`. K > 1 GPUs: a map from `device_map.plan_device_map` over a
  meta-device skeleton (or `split_model` with `device_map_method="internvl"`), checked with
  `check_device_map` before any weight is read.

Compatibility of InternVL's remote code with transformers 5 (it was written for 4.37-4.4x): the
remote path runs the folder's own code (`InternVLChatModel`, on which InternVL's own `chat` /
`batch_chat` work) and `launcher/remote_code.py` makes it run on 5.17 and 5.2x (its docstring has the
table of what breaks and what is done):

* before loading: every file the folder's `auto_map`s reach is checked for imports this environment
  lacks (`einops`, `timm`, `sentencepiece`, or transformers modules that 5.x removed): one UserError
  (exit 2) naming them, the files and the pip command; the folder's config class gets its own LLM as
  the default sub-config (5.17 builds a default config, which InternVL's class refuses with
  `Unsupported architecture: `); a model class whose `__init__` does not call `post_init()` (InternVL
  before August 2025) gets the call (5.x reads `all_tied_weights_keys` while loading).
* after loading: `ensure_generate` (below); remote LLMs whose `prepare_inputs_for_generation` reads
  legacy `past_key_values` (InternLM2) get the cache that 5.2x hands over as `cache=` and no
  whole-sequence position ids; non-persistent buffers of remote modules (InternLM2's rotary
  `inv_freq` / `cos_cached`, left uninitialised by 5.x's meta-device loading) are rebuilt.
* From transformers 4.50, `PreTrainedModel` no longer inherits `GenerationMixin`. InternVL's
  `InternVLChatModel.generate` calls `self.language_model.generate(...)`; an LLM class shipped as
  remote code without `GenerationMixin` (InternLM2ForCausalLM in InternVL2 / 2.5 -2B, -8B, -26B...)
  then fails with "'InternLM2ForCausalLM' object has no attribute 'generate'". `ensure_generate`
  gives such a submodule a subclass of its own class with `GenerationMixin` mixed in (the instance's
  `__class__` is swapped; no weights move) and a `generation_config` from its config. Transformers'
  own LLM classes (Qwen2, Llama) are left alone.
* Not runnable on 5.x: InternVL's `modeling_phi3.py` (InternVL2-4B) imports modules transformers 5
  removed (`transformers.modeling_attn_mask_utils`); the import check says so.
* Remote-code checkpoints load through `AutoModel` with `trust_remote_code` for both the model and
  the tokenizer (InternVL's own loader also passes `use_fast=False`; transformers 5 picks the
  tokenizer class from tokenizer_config.json).
* Verified locally against InternVL's own code (2026-12-02): tiny checkpoints built from InternVL's
  real files (Qwen2, InternLM2 with InternViT-300M and -6B, Llama, Qwen3; code from before and after
  its August 2025 change) predict on the remote path, under 5.24 and 5.17, the tokens InternVL's
  `batch_chat` predicts under transformers 4.37.2 (Qwen3's code: 4.55, bfloat16), with and without
  `--dynamic`; InternVL's own `batch_chat` on the model loaded here gives the same tokens. Decoded text
  differs for the Llama folders' sentencepiece tokenizer where random weights emit invalid byte
  sequences (transformers 5's tokenizers decode them differently from 4.37's slow tokenizer).

Verified: the tests run under transformers 5.24 (CPU) and 5.17 (the GPU image); on 2 x H200
(transformers 5.17, torch 2.11) one-GPU float32, bfloat16 and two-GPU (planner and internvl maps)
loading of both tiny checkpoints generated the CPU's text.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from launcher.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Pickle files that are not model weights (a trainer's arguments): never a reason to refuse.
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


@dataclass(frozen=True)
class CheckpointInfo:
    """What the folder says about itself, read before anything is imported or loaded."""

    path: Path
    config: dict[str, Any]
    model_type: str
    auto_map: dict[str, Any]
    safetensors: tuple[str, ...]
    pickle_weights: tuple[str, ...]

    @property
    def is_remote_code(self) -> bool:
        return bool(self.auto_map)


@dataclass
class LoadedModel:
    """A model on its devices plus what is needed to feed it."""

    model: Any
    tokenizer: Any
    info: CheckpointInfo
    devices: list[torch.device]
    dtype: torch.dtype
    device_map: dict[str, Any]
    quantization: str | None
    original: Any = None          # internvl_conversion.OriginalInternVL of a converted original folder
    model_code: Any = None        # model_code.ModelCodeChoice: which code runs the model, and why


def inspect_checkpoint(checkpoint: str | Path | None) -> CheckpointInfo:
    """Read `checkpoint`'s config.json and weight-file names; UserError if it is not a model folder."""
    if not checkpoint:
        raise UserError("no --checkpoint given: pass the model folder")
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise UserError(f"--checkpoint {checkpoint}: no such folder (runs are offline: pass a local "
                        f"model folder, not a Hub name)")
    if not path.is_dir():
        raise UserError(f"--checkpoint {checkpoint} is a file; pass the model folder that holds config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"--checkpoint {checkpoint} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"--checkpoint {checkpoint}: cannot read config.json: {error}") from None
    if not isinstance(config, dict):
        raise UserError(f"--checkpoint {checkpoint}: config.json is not a JSON object")
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    safetensors = tuple(f for f in files if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"))
    pickles = tuple(f for f in files if f.endswith(PICKLE_SUFFIXES) and f not in _NOT_WEIGHTS)
    return CheckpointInfo(path=path, config=config, model_type=str(config.get("model_type", "")),
                          auto_map=dict(config.get("auto_map") or {}), safetensors=safetensors,
                          pickle_weights=pickles)


def check_args(args: Any, info: CheckpointInfo) -> None:
    """The user errors that need no GPU and no import: flags that contradict each other or the folder."""
    if getattr(args, "load_in_8bit", False) and getattr(args, "load_in_4bit", False):
        raise UserError("--load-in-8bit and --load-in-4bit exclude each other: pass one of them")
    if info.is_remote_code and not getattr(args, "trust_remote_code", False):
        modules = sorted({str(v).split(".")[0] for v in info.auto_map.values() if isinstance(v, str)})
        raise UserError(
            f"--checkpoint {info.path} ships its own model code ({', '.join(m + '.py' for m in modules)} via "
            f"config.json's auto_map), which runs when loaded: pass --trust-remote-code if you trust it")
    if not info.safetensors and info.pickle_weights and not getattr(args, "allow_pickle_weights", False):
        raise UserError(
            f"--checkpoint {info.path} has only pickle weight files ({', '.join(info.pickle_weights[:3])}); "
            f"unpickling a file can run arbitrary code: pass --allow-pickle-weights if you trust it, or convert "
            f"the weights to safetensors")
    if not info.safetensors and not info.pickle_weights:
        raise UserError(f"--checkpoint {info.path} has a config.json but no weight files "
                        f"(*.safetensors, or *.bin with --allow-pickle-weights)")
    method = getattr(args, "device_map_method", "planner") or "planner"
    if method not in ("planner", "internvl"):
        raise UserError(f"--device-map must be 'planner' or 'internvl', got {method!r}")


def resolve_dtype(args: Any, devices: Sequence[torch.device]) -> torch.dtype:
    """`args.dtype` as a torch.dtype; default bfloat16 on GPU, float32 on CPU."""
    value = getattr(args, "dtype", None)
    if value is None or value == "auto":
        return torch.bfloat16 if devices[0].type == "cuda" else torch.float32
    if isinstance(value, torch.dtype):
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise UserError(f"--dtype must be bfloat16, float16 or float32, got {value!r}") from None


def resolve_devices(args: Any) -> list[torch.device]:
    """This process's devices: `args.devices`, else from `auto` / `gpus_per_model` (module docstring)."""
    devices = getattr(args, "devices", None)
    visible = torch.cuda.device_count()
    if devices:
        devices = [torch.device(d) for d in devices]
        missing = [str(d) for d in devices if d.type == "cuda" and (d.index or 0) >= visible]
        if missing:
            raise UserError(f"devices {missing} asked for, but this process sees {visible} GPU(s)")
        return devices
    if getattr(args, "auto", False):
        if visible == 0:
            return [torch.device("cpu")]
        return [torch.device("cuda", i) for i in range(visible)]
    count = int(getattr(args, "gpus_per_model", 1) or 1)
    if count < 1:
        raise UserError(f"--gpus-per-model must be at least 1, got {count}")
    if visible == 0:
        if count > 1:
            raise UserError(f"--gpus-per-model {count} asks for {count} GPUs, but no GPU is visible here")
        return [torch.device("cpu")]
    if count > visible:
        raise UserError(f"--gpus-per-model {count} asks for {count} GPUs, but this process sees {visible}: "
                        f"pass --gpus-per-model {visible} or fewer (or --auto)")
    start = torch.cuda.current_device()
    if start + count > visible:
        raise UserError(f"--gpus-per-model {count} from the current GPU {start} needs GPUs up to "
                        f"{start + count - 1}, but this process sees {visible}")
    return [torch.device("cuda", start + i) for i in range(count)]


def quantization_config(args: Any, dtype: torch.dtype) -> tuple[Any, str | None]:
    """`BitsAndBytesConfig` for --load-in-8bit / --load-in-4bit (None, None without them)."""
    eight, four = getattr(args, "load_in_8bit", False), getattr(args, "load_in_4bit", False)
    if eight and four:
        raise UserError("--load-in-8bit and --load-in-4bit exclude each other: pass one of them")
    if not (eight or four):
        return None, None
    flag = "--load-in-8bit" if eight else "--load-in-4bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{flag} needs the bitsandbytes package, which is not installed here "
                        f"(pip install bitsandbytes), or drop {flag}")
    import bitsandbytes  # noqa: F401  (imported only now: fail here, with our message, if it is broken)
    from transformers import BitsAndBytesConfig

    if eight:
        return BitsAndBytesConfig(load_in_8bit=True), "8bit"
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype), "4bit"


def plan_multi_gpu_map(
    info: CheckpointInfo,
    devices: Sequence[torch.device],
    *,
    method: str = "planner",
    dtype: torch.dtype = torch.bfloat16,
    trust_remote_code: bool = False,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    tiles_per_item: int = 1,
    max_memory: dict[int, int] | None = None,
    quantized: bool = False,
    skeleton: Any = None,
) -> dict[str, Any]:
    """A device map of the checkpoint over K GPUs, checked against its module tree.

    Uses a meta-device skeleton (no weights read). `max_memory` (bytes per GPU index) defaults to
    the free memory now; pass it to plan for GPUs this machine does not have. Quantized weights are
    sized as int8 (an overestimate for 4-bit, which is the safe side). `skeleton`: the meta-device model to
    plan for, when it is not the folder's own (a converted original InternVL folder).
    """
    from launcher import device_map as dm

    gpu_indices = [d.index if d.index is not None else 0 for d in devices]
    if skeleton is None:
        skeleton = dm.build_skeleton(info.path, trust_remote_code=trust_remote_code)
    roles = dm.layout_for_model(skeleton)
    if method == "internvl":
        num_layers = dm.count_layers([name for name, _ in skeleton.named_modules()], roles["layers_prefix"])
        device_map = dm.split_model(num_layers, devices=gpu_indices, layout=roles)
    else:
        dtype_bytes = torch.tensor([], dtype=dtype).element_size()
        runtime = dm.estimate_runtime_bytes(skeleton.config, max(1, batch_size), max(1, tiles_per_item),
                                            max(0, max_new_tokens), dtype_bytes)
        headroom = {d: runtime.llm_activations + dm.CUDA_OVERHEAD_BYTES for d in gpu_indices}
        headroom[gpu_indices[0]] += runtime.vision_activations + runtime.logits
        device_map = dm.plan_device_map(skeleton, gpu_indices, max_memory=max_memory, headroom=headroom,
                                        layout=roles, per_layer_bytes=runtime.kv_cache_per_layer,
                                        dtype=torch.int8 if quantized else dtype)
    dm.check_device_map(device_map, skeleton,
                        allowed_devices=gpu_indices if max_memory is not None else None)
    return device_map


def _model_class(info: CheckpointInfo) -> Any:
    """The Auto class for this checkpoint (module docstring)."""
    import transformers
    from transformers.models.auto import modeling_auto

    if info.is_remote_code:
        for name in ("AutoModel", "AutoModelForImageTextToText", "AutoModelForCausalLM"):
            if name in info.auto_map:
                return getattr(transformers, name)
        raise UserError(f"--checkpoint {info.path}: config.json's auto_map names no model class "
                        f"(found {sorted(info.auto_map)})")
    if info.model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return transformers.AutoModelForImageTextToText
    if info.model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if info.model_type not in CONFIG_MAPPING_NAMES:
        raise UserError(f"--checkpoint {info.path}: model type {info.model_type!r} is unknown to transformers "
                        f"{transformers.__version__} and the folder ships no code for it (no auto_map)")
    raise UserError(f"--checkpoint {info.path}: model type {info.model_type!r} is neither an image-text-to-text "
                    f"nor a causal language model; nothing here can generate text with it")


def ensure_generate(model: Any) -> list[str]:
    """Give remote-code LLM submodules without `GenerationMixin` a working `generate` (docstring above).

    Returns the names of the modules patched (empty for models that need nothing).
    """
    from transformers import GenerationConfig, GenerationMixin, PreTrainedModel

    patched = []
    for name, module in model.named_modules():
        if not isinstance(module, PreTrainedModel) or isinstance(module, GenerationMixin):
            continue
        cls = type(module)
        # Only language models: they define their own prepare_inputs_for_generation (InternLM2) or
        # have a token head; a vision tower without either is left alone.
        defines_generation_hook = "prepare_inputs_for_generation" in vars(cls)
        if not (defines_generation_hook or hasattr(module, "lm_head") or hasattr(module, "output")):
            continue
        if name == "":
            # The top-level InternVLChatModel defines its own generate(); never replace it.
            if "generate" in vars(cls):
                continue
        module.__class__ = type(cls.__name__, (cls, GenerationMixin), {"__module__": cls.__module__})
        if getattr(module, "generation_config", None) is None:
            module.generation_config = GenerationConfig.from_model_config(module.config)
        patched.append(name or "<model>")
    return patched


def _missing_code_packages(error: ImportError) -> str | None:
    text = str(error)
    if "requires the following packages" in text or "packages that were not found" in text:
        return text.strip().splitlines()[0]
    return None


def load_model(args: Any, devices: Sequence[torch.device] | None = None) -> LoadedModel:
    """Check `args`, then load the model (eval mode) and its tokenizer onto `devices`."""
    from launcher.model_code import choose_model_code, load_converted

    info = inspect_checkpoint(getattr(args, "checkpoint", None))
    # Original InternVL folders are converted to the native model before any of their code could run.
    choice = choose_model_code(info, args)
    if choice.path == "converted":
        devices = [torch.device(d) for d in devices] if devices else resolve_devices(args)
        return load_converted(args, info, choice, devices, resolve_dtype(args, devices))
    check_args(args, info)
    devices = [torch.device(d) for d in devices] if devices else resolve_devices(args)
    dtype = resolve_dtype(args, devices)
    quantization, quantization_name = quantization_config(args, dtype)
    trust_remote_code = bool(getattr(args, "trust_remote_code", False))
    if len(devices) > 1:
        if any(d.type != "cuda" for d in devices):
            raise UserError(f"a model split over several devices needs GPUs, got {[str(d) for d in devices]}")
        device_map = plan_multi_gpu_map(
            info, devices, method=getattr(args, "device_map_method", "planner") or "planner", dtype=dtype,
            trust_remote_code=trust_remote_code, batch_size=int(getattr(args, "batch_size", 16) or 16),
            max_new_tokens=int(getattr(args, "max_new_tokens", None) or 64),
            tiles_per_item=int(getattr(args, "max_num", 6) or 6) + 1 if getattr(args, "dynamic", False) else 1,
            quantized=quantization is not None)
    else:
        device = devices[0]
        device_map = {"": device.index if device.type == "cuda" else str(device)}

    from transformers import AutoTokenizer

    model_class = _model_class(info)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map, "trust_remote_code": trust_remote_code}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    kwargs["use_safetensors"] = bool(info.safetensors)
    if info.is_remote_code:
        from launcher.remote_code import prepare_remote_code

        kwargs.update(prepare_remote_code(info.path, info.config))
    try:
        model = model_class.from_pretrained(str(info.path), **kwargs)
        # Original folders (and `launcher convert` output): tokenizers with InternVL 4.37 slow behaviour.
        if choice.original is not None and choice.path in ("native", "remote"):
            from launcher.original_tokenizers import load_original_tokenizer

            tokenizer = load_original_tokenizer(info.path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(info.path), trust_remote_code=trust_remote_code)
    except ImportError as error:
        missing = _missing_code_packages(error)
        if missing is None:
            raise
        raise UserError(f"--checkpoint {info.path}: its model code cannot be imported here: {missing}. "
                        f"Install those packages, or use the transformers-native '-hf' version of this "
                        f"checkpoint, which needs no remote code") from None
    if info.is_remote_code:
        from launcher.remote_code import repair_remote_model

        ensure_generate(model)
        repair_remote_model(model, dtype)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, devices=list(devices), dtype=dtype,
                       device_map=dict(getattr(model, "hf_device_map", None) or device_map),
                       quantization=quantization_name, model_code=choice,
                       original=choice.original if choice.path == "native" else None)


def load_model_and_tokenizer(args: Any) -> tuple[Any, Any]:
    """InternVL's `load_model_and_tokenizer(args)`: `(model, tokenizer)`, the model in eval mode on
    this process's devices (see the module docstring for the attributes read from `args`)."""
    loaded = load_model(args, getattr(args, "devices", None))
    return loaded.model, loaded.tokenizer


def load_adapter(args: Any, devices: Sequence[torch.device] | None = None) -> Any:
    """Load the model onto `devices` and return the adapter for its family (`launcher.adapters`)."""
    from launcher.adapters import make_adapter

    loaded = load_model(args, devices if devices else getattr(args, "devices", None))
    adapter = make_adapter(loaded, dynamic=bool(getattr(args, "dynamic", False)),
                           max_num=int(getattr(args, "max_num", 6) or 6))
    choice = loaded.model_code
    if choice is not None and choice.original is not None:   # run.json says how an original folder ran, and why
        adapter.model_code_record = {"path": choice.path, "reason": choice.reason}
    return adapter
