"""How a model family turns items into inputs and generated text.

An `Adapter` splits the work of one batch in two:

* `collate(items, prompts, images)`: all CPU work (tiling, pixel values, chat template,
  tokenisation, left padding). It runs in DataLoader worker processes (forked), so it never touches
  CUDA; it returns a `ModelInputs`, whose `pin_memory()` lets the DataLoader pin it.
* `generate(batch, settings)`: moves the batch to the model's first device (non_blocking: the copy
  overlaps when the batch is pinned), runs greedy or beam search, returns the decoded texts in
  batch order, special tokens removed and whitespace stripped.

Pixels travel as uint8 where that is exact: collate leaves rescale + mean/std normalisation out and
`ModelInputs.to` applies it on the device after the copy (`launcher.pixel_normalization` says why).
The remote-code adapter always does (our own tiling); the native adapter does when a probe at
construction shows its processor's bytes, normalised by us, equal its own float output
(`NativeImageTextAdapter.deferred_normalization`); `describe()["pixel_transfer"]` records which.

Adapters:

* `NativeImageTextAdapter`: transformers-native image-text-to-text models (the families of
  `launcher.tiny_families`: Qwen2/2.5/3-VL, LLaVA, LLaVA-NeXT, LLaVA-OneVision, Idefics3, SmolVLM, Gemma 3,
  PaliGemma, Mllama, InternVL `-hf`, Aya Vision, GLM-4.1V): inputs exactly as
  `processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)`
  builds them (the template rendered, no special tokens added when it wrote BOS itself, images EXIF-rotated
  and given to the processor as one list per item), PaliGemma's model-card prompt where there is no chat
  template, only the tensors `generate` takes (no `labels`), then `model.generate` or our greedy loop. What
  the adapter does for a family (prompt, images, chunk joining, fast decoding) is decided once at load
  (`FamilyCapabilities`, probed, not assumed) and recorded in run.json. Processors whose video processor
  needs torchvision are built with it left out (`build_processor_without_video`). InternVL's `--dynamic
  --max-num M` reach its processor through `tiling.native_processor_kwargs`.
* `InternVLChatAdapter`: remote-code InternVLChatModel checkpoints. Tiling by `launcher.tiling`
  (InternVL's `dynamic_preprocess` + `build_transform`), the query built exactly as InternVL's
  `chat` / `batch_chat` build it (the model's own conversation template and system message,
  `<image>` -> `<img>` + `<IMG_CONTEXT>` x num_image_token x tiles + `</img>`), then the model's own
  `generate(pixel_values, input_ids, attention_mask)`, as `batch_chat` does. We do not call
  `batch_chat` itself because it tokenises inside the call (that work belongs in the workers) and
  replaces only one `<image>` per question (no multi-image items); the tests check that our output
  equals `batch_chat`'s and per-item `chat`'s.
* `CausalLMAdapter`: text-only models (the tokenizer's chat template when it has one).

Prompts and images (decisions):

* The task's prompt carries no image placeholder; the adapter adds one per image. InternVL remote
  code: one image -> `"<image>\\n" + prompt` (what `chat` prepends); several -> `"Image-1:
  <image>\\nImage-2: <image>\\n" + prompt` (InternVL's multi-image convention); a prompt that
  already holds exactly one `<image>` per image is used as is.
* `estimate_cost` counts LLM tokens: prompt tokens plus image tokens (tiles x tokens per tile + 2
  for the image start / end markers). `image_sizes` are PIL's `(width, height)`.
* Sampling (`temperature > 0`) re-seeds torch with `settings.seed` before each generate call, so a
  batch's output does not depend on what ran before it.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image

from eval_scripts.base import DataError, Item
from launcher.errors import UserError
from launcher.generation import GenerationSettings
from launcher.pixel_normalization import PixelNormalization
from launcher.tiling import IMAGENET_NORMALIZATION

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


@dataclass
class ModelInputs:
    """One collated batch: tensors for the model (CPU, maybe pinned) and plain values beside them.

    With `pixel_normalization` set, `tensors["pixel_values"]` holds uint8 bytes that `to()` normalises
    on the device; every caller of `to()` (adapters, benchmarks) thus gets model-ready pixel values.
    """

    tensors: dict[str, torch.Tensor]
    size: int
    extra: dict[str, Any] = field(default_factory=dict)
    pixel_normalization: PixelNormalization | None = None
    pad_values: dict[str, int] = field(default_factory=dict)   # left-padded [rows, length, ...] tensors
    # Per-item tensors [rows, slots, ...] whose empty slots the processor does not fill with zeros: the value of
    # one empty slot (Mllama's aspect_ratio_mask marks tile 0 of an absent image valid).
    slot_fill: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.size

    def pin_memory(self) -> "ModelInputs":
        """Called by the DataLoader (pin_memory=True) so the host-to-GPU copy can be asynchronous."""
        return dataclasses.replace(self, tensors={k: v.pin_memory() for k, v in self.tensors.items()},
                                   extra=dict(self.extra))

    @classmethod
    def join(cls, parts: Sequence["ModelInputs"], pin_memory: bool = False) -> "ModelInputs":
        """One batch from parts collated apart, in order: what one collate of all their items gives.

        Processors pad a batch to its largest member, so parts collated apart differ in shape beyond their
        first dimension; the join pads each to the largest part the same way:

        * tensors named in `pad_values` (token ids, masks, token types, Mllama's cross-attention mask:
          `[rows, length, ...]`) are left-padded along the length, as the tokenizer pads a batch, and
          right-padded with the same value in any further dimension;
        * every other tensor is concatenated on its first dimension (rows, images, tiles or patches), each
          part right-padded with zeros in the dimensions where parts differ: the patches of LLaVA-NeXT /
          OneVision, the images and tile sizes of Idefics3 / SmolVLM and their pixel masks, Mllama's images,
          tiles and aspect ratios. Processors pad those with zeros at the end too, except in the empty slots
          named in `slot_fill`, which get that value (as the processor writes it).

        List extras (one entry per item) are chained. The result is written straight into pinned memory when
        `pin_memory`, the one copy the join costs. Whether the join equals one collate is checked per family
        at load (`NativeImageTextAdapter`) and by tests for every family of the table.
        """
        first = parts[0]
        if len(parts) == 1:
            return first.pin_memory() if pin_memory else first
        if any(part.tensors.keys() != first.tensors.keys() or part.extra.keys() != first.extra.keys()
               for part in parts):
            raise ValueError("parts with different inputs (e.g. with and without images) cannot be joined")
        tensors = {}
        for name, tensor in first.tensors.items():
            pieces = [part.tensors[name] for part in parts]
            if any(piece.dim() != tensor.dim() or piece.dtype != tensor.dtype for piece in pieces):
                raise ValueError(f"parts hold {name} with different ranks or dtypes: they cannot be joined")
            rows = sum(piece.shape[0] for piece in pieces)
            trailing = [max(piece.shape[dim] for piece in pieces) for dim in range(1, tensor.dim())]
            if all(list(piece.shape[1:]) == trailing for piece in pieces):
                # Nothing to pad (pixel rows of one size, ids of equal length): one copy, no fill pass first.
                joined = torch.empty((rows, *trailing), dtype=tensor.dtype, pin_memory=pin_memory)
                tensors[name] = torch.cat(pieces, dim=0, out=joined)
                continue
            fill = first.pad_values.get(name, 0)
            joined = torch.full((rows, *trailing), fill, dtype=tensor.dtype, pin_memory=pin_memory)
            row = 0
            for piece in pieces:
                target = [slice(row, row + piece.shape[0])]
                for dim, size in enumerate(piece.shape[1:], start=1):
                    if dim == 1 and name in first.pad_values:      # left padding of the token axis
                        target.append(slice(trailing[0] - size, trailing[0]))
                    else:
                        target.append(slice(0, size))
                joined[tuple(target)] = piece
                slot = first.slot_fill.get(name)
                if slot is not None and piece.shape[1] < trailing[0]:
                    empty = joined[row:row + piece.shape[0], piece.shape[1]:]
                    region = tuple(slice(0, min(a, b)) for a, b in zip(empty.shape[2:], slot.shape))
                    empty.zero_()
                    empty[(slice(None), slice(None), *region)] = slot[region]
                row += piece.shape[0]
            tensors[name] = joined
        extra = {key: [value for part in parts for value in part.extra[key]] for key in first.extra}
        return dataclasses.replace(first, tensors=tensors, size=sum(part.size for part in parts), extra=extra)

    def to(self, device: torch.device, float_dtype: torch.dtype | None = None, *,
           pixel_device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """The tensors on `device` (pixel values on `pixel_device` when given: a split model's vision
        tower); floating ones cast to `float_dtype`; uint8 pixel values with a `pixel_normalization`
        normalised after the copy, on their device, into `float_dtype` (float32 when None)."""
        moved = {}
        for name, tensor in self.tensors.items():
            target = pixel_device if name == "pixel_values" and pixel_device is not None else device
            if float_dtype is not None and tensor.is_floating_point():
                moved[name] = tensor.to(target, dtype=float_dtype, non_blocking=True)
            else:
                moved[name] = tensor.to(target, non_blocking=True)
        pixels = moved.get("pixel_values")
        if self.pixel_normalization is not None and pixels is not None and pixels.dtype == torch.uint8:
            moved["pixel_values"] = self.pixel_normalization.apply(pixels, float_dtype)
        return moved


def avoid_per_shape_attention_plans() -> None:
    """Turn off PyTorch's cuDNN backend of scaled_dot_product_attention (flash / memory-efficient
    kernels serve instead). cuDNN builds an execution plan for every new sequence shape, and an
    evaluation's cost-sorted batches almost all have a new padded length: on one H100 (2B shape, batch
    128, 16 batches) the first pass of plain `generate` took 23.3 s and the same batches again 14.1 s.
    Process-wide: it only changes which kernel computes the same attention."""
    torch.backends.cuda.enable_cudnn_sdp(False)


def _token_pad_values(tensors: dict[str, torch.Tensor], pad_token_id: int | None) -> dict[str, int]:
    """Pad values of the left-padded token tensors of a collated batch: integer tensors shaped like
    `input_ids` in their first two dimensions (ids: the pad token; masks and type ids: 0)."""
    ids = tensors.get("input_ids")
    if ids is None:
        return {}
    return {name: (int(pad_token_id or 0) if name == "input_ids" else 0) for name, tensor in tensors.items()
            if tensor.dim() >= 2 and tensor.shape[:2] == ids.shape[:2]
            and tensor.dtype in (torch.int64, torch.int32, torch.bool)}


def _first_device(model: Any) -> torch.device:
    """Where inputs go: the device of the input embeddings (the first stage of a split model)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def _strip(texts: Sequence[str]) -> list[str]:
    return [text.strip() for text in texts]


class Adapter:
    """Base class: see the module docstring for the contract of each method."""

    name = "adapter"
    # How an original InternVL folder is run ({"path", "reason"}, launcher/model_code.py); set by the loader.
    model_code_record: dict[str, str] | None = None

    def __init__(self, model: Any, tokenizer: Any, *, dtype: torch.dtype | None = None,
                 device_map: dict[str, Any] | None = None, quantization: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype if dtype is not None else getattr(model, "dtype", torch.float32)
        self.device_map = dict(device_map or {})
        self.quantization = quantization
        self._decoder: Any = None        # GreedyDecoder once made; False when generate must be used
        # Set by the run where `prefix_sharing.unsupported_reason` allows it: collate then shares image prefixes.
        self.prefix_sharing = False
        # Batches generated in the shared layout, their items and their distinct prefixes (vision + prefill runs).
        self.sharing_counts = {"batches": 0, "items": 0, "prefixes": 0}
        if _first_device(model).type == "cuda":
            avoid_per_shape_attention_plans()

    def collate(self, items: Sequence[Item], prompts: Sequence[str],
                images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        raise NotImplementedError

    def generate(self, batch: ModelInputs, settings: GenerationSettings) -> list[str]:
        raise NotImplementedError

    def estimate_cost(self, item: Item, prompt: str, image_sizes: Sequence[tuple[int, int]]) -> float:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": self.name,
            "model_class": type(self.model).__name__,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device_map": {k: str(v) for k, v in self.device_map.items()},
            "quantization": self.quantization,
            "tokenizer": type(self.tokenizer).__name__,
            **({"model_code": dict(self.model_code_record)} if self.model_code_record else {}),
        }

    def fast_decode_unsupported(self) -> str | None:
        """Why `launcher.fast_decode` cannot replace `generate` for this model, or None."""
        from launcher.fast_decode import unsupported_reason

        if self.quantization:
            return f"{self.quantization} weights (bitsandbytes kernels are not captured in CUDA graphs)"
        return unsupported_reason(self.model)

    def _new_tokens(self, inputs: dict[str, torch.Tensor], settings: GenerationSettings) -> torch.Tensor:
        """The generated token ids [B, n] after the prompt: our greedy loop where it applies (one
        `GreedyDecoder` per adapter, so batches of one shape reuse its CUDA graph), else `generate`."""
        from launcher import prefix_sharing
        from launcher.fast_decode import FastDecodeError, GreedyDecoder

        shared = prefix_sharing.is_shared(inputs)
        if shared:
            self.sharing_counts["batches"] += 1
            self.sharing_counts["items"] += int(inputs[prefix_sharing.MEMBER_GROUP].shape[0])
            self.sharing_counts["prefixes"] += int(inputs[prefix_sharing.PREFIX_GROUP].shape[0])
        if settings.fast_greedy and self._decoder is None:
            self._decoder = False
            if self.fast_decode_unsupported() is None:
                self._decoder = GreedyDecoder(self.model, eos_token_id=self.model.generation_config.eos_token_id,
                                              pad_token_id=self.tokenizer.pad_token_id,
                                              use_cuda_graph=_first_device(self.model).type == "cuda")
        if settings.fast_greedy and self._decoder:
            try:
                return self._decoder.generate(prefix_sharing.SharedPrompt(inputs) if shared else inputs,
                                              settings.max_new_tokens)
            except FastDecodeError as error:   # e.g. a capture that fails: say so once, then use generate
                print(f"[launcher] fast greedy decoding failed, using transformers' generate: {error}",
                      file=sys.stderr, flush=True)
                self._decoder = False
            except torch.cuda.OutOfMemoryError:
                # The kept shapes' caches may be what no longer fits: free them before the runner
                # retries the batch in halves.
                self._decoder.release()
                raise
        if shared:   # generate continues from the prefixes prefilled once (split models, --decode generate)
            return prefix_sharing.SharedPrompt(inputs).generate(self.model, settings.generate_kwargs(),
                                                               self.tokenizer.pad_token_id)
        output = self.model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=self.tokenizer.pad_token_id)
        return output[:, inputs["input_ids"].shape[1]:]

    def _decode_description(self) -> str:
        reason = self.fast_decode_unsupported()
        if reason is not None:
            return f"transformers generate ({reason})"
        return "launcher.fast_decode greedy loop" + (
            ", CUDA graph" if _first_device(self.model).type == "cuda" else ", eager") + " (sampling, beams: generate)"

    def _prompt_tokens(self, prompt: str) -> int:
        if not prompt:       # the image part of a cost alone (prefix sharing): no tokenizer call
            return 0
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    @staticmethod
    def _seed(settings: GenerationSettings) -> None:
        if settings.do_sample:
            torch.manual_seed(settings.seed)


# ------------------------------------------------------------------------------------------------
# transformers-native image-text-to-text models


class VideoProcessorLeftOut:
    """Stands in for a processor's video processor where transformers cannot build one (no torchvision).

    Images never reach a video processor; a few processors read its frame settings while preparing any
    conversation (SmolVLM's `apply_chat_template` reads `num_frames` and `fps`), so those exist, as None
    ("not set"). Anything else says why it is missing."""

    model_input_names: list[str] = []
    num_frames = None
    fps = None

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"this processor was built without its video processor (transformers needs "
                             f"torchvision for it, and images do not use it): no {name!r}")

    def __repr__(self) -> str:
        return "VideoProcessorLeftOut()"


_WITHOUT_VIDEO: dict[type, type] = {}


def processor_without_video(processor_class: type) -> type:
    """A subclass of `processor_class` that accepts a `VideoProcessorLeftOut` as its video processor.

    transformers' ProcessorMixin checks every sub-processor's class, and without torchvision the video
    processor's base class cannot even be imported; the check is skipped for that one argument only."""
    if processor_class not in _WITHOUT_VIDEO:
        def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and isinstance(argument, VideoProcessorLeftOut):
                return None
            return processor_class.check_argument_for_proper_class(self, argument_name, argument)

        _WITHOUT_VIDEO[processor_class] = type(processor_class.__name__ + "WithoutVideo", (processor_class,), {
            "check_argument_for_proper_class": check_argument_for_proper_class,
            "__module__": processor_class.__module__,
            "__doc__": f"{processor_class.__name__} with its video processor left out (no torchvision)."})
    return _WITHOUT_VIDEO[processor_class]


def missing_package(error: BaseException) -> str | None:
    """The package an ImportError from transformers names as missing (torchvision, num2words, ...), or None."""
    import re

    text = str(error)
    for pattern in (r"requires the (\w+) library", r"Package `(\w+)` is required", r"No module named '([\w.]+)'",
                    r"pip install ([\w-]+)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1).split(".")[0].lower()
    return None


def _missing_package_error(path: str, what: str, error: BaseException) -> UserError:
    package = missing_package(error)
    if package is None:
        return UserError(f"--checkpoint {path}: cannot build its {what}: {type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}")
    return UserError(f"--checkpoint {path}: its {what} needs the package {package!r}, which is not installed "
                     f"here: install {package} (pip install {package}) to evaluate this model")


def load_image_processor(path: str) -> Any:
    """`AutoImageProcessor`, or (no torchvision) the PIL-backend class of preprocessor_config.json's
    `image_processor_type`. An image processor that exists only with torchvision is a UserError naming it."""
    import json
    from pathlib import Path

    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(path)
    except (ImportError, ValueError) as error:
        config_file = Path(path) / "preprocessor_config.json"
        if not config_file.is_file():
            raise UserError(f"--checkpoint {path}: no image processor (preprocessor_config.json): {error}") from None
        type_name = json.loads(config_file.read_text()).get("image_processor_type", "")
        base = type_name.removesuffix("Fast").removesuffix("Pil")
        last_error: BaseException = error
        for candidate in (base + "Pil", base):
            try:
                image_processor_class = getattr(transformers, candidate, None)
                if image_processor_class is not None:
                    return image_processor_class.from_pretrained(path)
            except ImportError as failure:
                last_error = failure
        raise _missing_package_error(path, f"image processor {type_name!r}", last_error) from None


def _processor_class(path: Any, model_type: str) -> Any:
    """The processor class processor_config.json names, else the one transformers maps the model type to."""
    import json

    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config_file = path / "processor_config.json"
    name = json.loads(config_file.read_text()).get("processor_class") if config_file.is_file() else None
    name = name or PROCESSOR_MAPPING_NAMES.get(model_type)
    if not name:
        raise UserError(f"--checkpoint {path}: no processor_config.json and transformers maps no processor to "
                        f"model type {model_type!r}: nothing here can turn images into this model's inputs")
    try:
        processor_class = getattr(transformers, name)
        processor_class.get_attributes()          # a placeholder class raises here when a backend is missing
    except (ImportError, AttributeError) as error:
        raise _missing_package_error(str(path), f"processor {name}", error) from None
    return processor_class


def load_processor(path: str, tokenizer: Any, model_config: Any) -> Any:
    """The checkpoint's processor: `AutoProcessor`, else `build_processor_without_video` (no torchvision)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, ValueError, TypeError, AttributeError, OSError) as error:
        return build_processor_without_video(path, tokenizer, str(getattr(model_config, "model_type", "")),
                                             reason=error)


def build_processor_without_video(path: str, tokenizer: Any, model_type: str,
                                  reason: BaseException | None = None) -> Any:
    """The checkpoint's processor class built from its saved parts with the video processor left out
    (`VideoProcessorLeftOut`): what `AutoProcessor` builds where torchvision is installed, less the video
    part, which images never use. The class comes from processor_config.json (else transformers' mapping
    of the model type), its settings from that file, the chat template from chat_template.jinja / .json
    (else the tokenizer's). A processor that needs a missing package for images (torchvision for
    Pixtral, num2words for SmolVLM) is a UserError naming it; `reason` is why AutoProcessor failed."""
    import inspect
    import json
    from pathlib import Path

    folder = Path(path)
    processor_class = _processor_class(folder, model_type)
    parts: dict[str, Any] = {}
    for attribute in processor_class.get_attributes():
        if attribute == "tokenizer":
            parts[attribute] = tokenizer
        elif attribute == "image_processor":
            parts[attribute] = load_image_processor(path)
        elif attribute == "video_processor":
            parts[attribute] = VideoProcessorLeftOut()
        else:
            raise UserError(f"--checkpoint {path}: {processor_class.__name__} needs a {attribute}, which cannot "
                            f"be built here" + (f" ({type(reason).__name__}: {reason})" if reason else ""))
    settings_file = folder / "processor_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    accepted = inspect.signature(processor_class.__init__).parameters
    settings = {key: value for key, value in settings.items() if key in accepted and key not in parts}
    chat_template = getattr(tokenizer, "chat_template", None)
    if (folder / "chat_template.jinja").is_file():
        chat_template = (folder / "chat_template.jinja").read_text()
    elif (folder / "chat_template.json").is_file():
        chat_template = json.loads((folder / "chat_template.json").read_text()).get("chat_template", chat_template)
    if "chat_template" in accepted:
        settings["chat_template"] = chat_template
    try:
        return processor_without_video(processor_class)(**parts, **settings)
    except ImportError as error:
        raise _missing_package_error(path, f"processor {processor_class.__name__}", error) from None


@dataclass(frozen=True)
class FamilyCapabilities:
    """How the native adapter runs one model family, decided once at load (`NativeImageTextAdapter`) and
    written to run.json (`describe()["capabilities"]`). Each path is used only where it is known equal to
    plain transformers for the family (tests/test_families.py)."""

    prompt: str                 # how the text of an item is built
    images: str                 # how images reach the processor
    chunk_join: str             # how chunks prepared by different workers become one batch
    joins_chunks: bool          # False: the runner prepares every batch in one piece
    fast_decode: str            # "launcher.fast_decode" or "generate: <why>"
    prefix_sharing: str         # sharing a question-independent prefix between items

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Families whose fast-decode output is proven equal to `generate` by tests/test_families.py (float32,
# CPU): only these use `launcher.fast_decode`; any other model type decodes with `generate`.
FAST_DECODE_PROVEN = frozenset({
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "llava", "llava_next", "llava_onevision", "idefics3",
    "smolvlm", "paligemma", "internvl"})

# Processor outputs that `generate` does not take as model inputs (PaliGemma returns training labels).
_NOT_MODEL_INPUTS = frozenset({"labels"})


class NativeImageTextAdapter(Adapter):
    """Processor + `model.generate` with left padding, prompts and image lists as transformers builds them."""

    name = "native_image_text"

    def __init__(self, model: Any, processor: Any, *, dynamic: bool = False, max_num: int = 6,
                 **kwargs: Any) -> None:
        super().__init__(model, processor.tokenizer, **kwargs)
        self.processor = processor
        # Batched generation continues every row from its last token: the padding must be on the left.
        self.tokenizer.padding_side = "left"
        self.dynamic, self.max_num = dynamic, max_num
        self.processor_kwargs: dict[str, Any] = {}
        self.model_type = str(getattr(model.config, "model_type", ""))
        if self.model_type == "internvl":
            from launcher.tiling import native_processor_kwargs

            self.processor_kwargs = dict(native_processor_kwargs(dynamic, max_num))
        self.chat_template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        import inspect

        self.model_input_names = frozenset(inspect.signature(model.forward).parameters) - _NOT_MODEL_INPUTS
        # None: collate ships the processor's float32 pixel values as they are.
        self.pixel_normalization = self.deferred_normalization()
        self._image_token_counts: dict[tuple[int, int], int] = {}
        self._slot_fill: dict[str, torch.Tensor] = {}
        self._slot_fill = self._probe_slot_fill()
        self.capabilities = self._decide_capabilities()

    # -- prompts and processor ----------------------------------------------------------------------

    def text(self, prompt: str, num_images: int) -> str:
        """The text of one item before tokenisation: the chat template over one user turn (one image part per
        image, then the prompt), as `processor.apply_chat_template` renders it; without a chat template
        (PaliGemma), one image token per image and the prompt (the processor adds BOS and the newline where
        the model card puts them)."""
        if self.chat_template:
            content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False,
                                                      chat_template=self.chat_template)
        return self.image_token * num_images + prompt

    def _adds_special_tokens(self, texts: Sequence[str]) -> bool:
        """What `apply_chat_template(tokenize=True)` tells the tokenizer: no special tokens when the rendered
        text already starts with BOS (the template wrote it), else the tokenizer's own (transformers 5.x,
        `ProcessorMixin.apply_chat_template`)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return not (self.chat_template and bos is not None and texts and texts[0].startswith(bos))

    def encode(self, texts: Sequence[str], images: Sequence[Sequence[Image.Image]], *, as_bytes: bool) -> Any:
        """The processor's output for item texts and their images, one list of images per item (how
        `apply_chat_template` hands conversations' images to the processor); `as_bytes`: pixel values
        without rescale and normalisation."""
        kwargs: dict[str, Any] = {"text": list(texts), "padding": True, "return_tensors": "pt",
                                  "add_special_tokens": self._adds_special_tokens(texts)}
        nested = [list(item_images) for item_images in images]
        if any(nested):
            kwargs["images"] = nested
            kwargs.update(self.processor_kwargs)
            if as_bytes:
                kwargs.update(do_rescale=False, do_normalize=False)
        return self.processor(**kwargs)

    def deferred_normalization(self) -> PixelNormalization | None:
        """The image processor's rescale + normalisation when collate can leave them to the device, else None.

        Checked once, not assumed from attributes: two probe images go through `encode` as collate
        sends them, as they are and `as_bytes`; deferral is on only if the second gives uint8 pixels of
        the same shape that `PixelNormalization` turns into the first within 1e-5. Anything else (an
        exception, another dtype, another layout such as Qwen2-VL's flattened patches) keeps the
        processor's float32 path, which is always correct.
        """
        image_processor = getattr(self.processor, "image_processor", None)
        try:
            if not (image_processor.do_rescale and image_processor.do_normalize):
                return None
            normalization = PixelNormalization(float(image_processor.rescale_factor),
                                               _per_channel(image_processor.image_mean),
                                               _per_channel(image_processor.image_std))
            images = [[image] for image in _probe_images(getattr(image_processor, "size", None))]
            texts = [self.text("describe the image", 1) for _ in images]
            expected = self.encode(texts, images, as_bytes=False)["pixel_values"]
            pixel_bytes = self.encode(texts, images, as_bytes=True)["pixel_values"]
            if pixel_bytes.dtype != torch.uint8 or pixel_bytes.shape != expected.shape:
                return None
            difference = float((normalization.apply(pixel_bytes) - expected.float()).abs().max())
        except Exception:  # any failure of the probe only means: no deferral
            return None
        return normalization if difference <= 1e-5 else None

    def collate(self, items: Sequence[Item], prompts: Sequence[str],
                images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        from transformers.image_utils import load_image

        if self.prefix_sharing:
            from launcher.prefix_sharing import collate_shared

            shared = collate_shared(self, items, prompts, images)
            if shared is not None:
                return shared
        texts = [self.text(prompt, len(item_images)) for prompt, item_images in zip(prompts, images)]
        # What apply_chat_template does to every image of a conversation: EXIF orientation applied, RGB.
        images = [[load_image(image) for image in item_images] for item_images in images]
        has_images = any(len(item_images) for item_images in images)
        encoded = self.encode(texts, images, as_bytes=self.pixel_normalization is not None)
        tensors = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor) and k in self.model_input_names}
        return ModelInputs(tensors, len(texts), pixel_normalization=self.pixel_normalization if has_images else None,
                           pad_values=_token_pad_values(tensors, self.tokenizer.pad_token_id),
                           slot_fill={name: fill for name, fill in self._slot_fill.items() if name in tensors})

    # -- capabilities -------------------------------------------------------------------------------

    def _decide_capabilities(self) -> FamilyCapabilities:
        from launcher.prefix_sharing import family_capability

        if self.chat_template:
            prompt = ("chat template (processor.apply_chat_template, tokenize=True equivalent: "
                      + ("BOS written by the template, none added" if self._template_writes_bos()
                         else "special tokens added by the tokenizer") + ")")
        else:
            prompt = "no chat template: one image token per image, then the prompt (the processor places BOS)"
        joins, join_note = self._probe_chunk_join()
        fast = self.fast_decode_unsupported()
        return FamilyCapabilities(
            prompt=prompt, images="one list of images per item (nested)", chunk_join=join_note, joins_chunks=joins,
            fast_decode="launcher.fast_decode" if fast is None else f"generate: {fast}",
            prefix_sharing=family_capability(self.model_type))

    def _template_writes_bos(self) -> bool:
        return not self._adds_special_tokens([self.text("describe the image", 1)])

    def _probe_items(self) -> tuple[list[Item], list[str], list[list[Image.Image]]]:
        """Three items of different prompt lengths and image sizes, the last with two images."""
        probes = _probe_images(getattr(getattr(self.processor, "image_processor", None), "size", None))
        small = probes[0].resize((max(1, probes[0].width // 2), probes[0].height))
        prompts = ["describe the image", "what is the colour of the largest shape in the picture ?", "count"]
        items = [Item(id=str(index), question=prompt) for index, prompt in enumerate(prompts)]
        return items, prompts, [[probes[0]], [probes[1]], [small, probes[0]]]

    def _probe_slot_fill(self) -> dict[str, torch.Tensor]:
        """What the processor writes in an empty per-item slot (an image slot of a one-image item batched with a
        two-image item) where that is not zeros: the join fills empty slots the same way."""
        items, prompts, images = self._probe_items()
        try:
            batch = self.collate([items[0], items[2]], [prompts[0], prompts[2]], [images[0], images[2]])
            single = self.collate([items[0]], [prompts[0]], [images[0]])
        except Exception:           # nothing to learn; the chunk-join probe decides what happens
            return {}
        fills = {}
        for name, tensor in batch.tensors.items():
            alone = single.tensors.get(name)
            if (name in batch.pad_values or alone is None or tensor.dim() < 3 or tensor.shape[0] != 2
                    or alone.shape[1] >= tensor.shape[1]):
                continue
            empty = tensor[0, alone.shape[1]]
            if bool(empty.any()):
                fills[name] = empty.clone()
        return fills

    def _probe_chunk_join(self) -> tuple[bool, str]:
        """Whether `ModelInputs.join` of chunks equals one collate of the whole batch for this processor:
        the probe items (`_probe_items`), joined from single-item chunks."""
        items, prompts, images = self._probe_items()
        try:
            whole = self.collate(items, prompts, images)
            parts = [self.collate([item], [prompt], [image_list])
                     for item, prompt, image_list in zip(items, prompts, images)]
            joined = ModelInputs.join(parts)
            same = whole.tensors.keys() == joined.tensors.keys() and all(
                torch.equal(whole.tensors[name], joined.tensors[name]) for name in whole.tensors)
        except Exception as error:  # a layout the join cannot handle: prepare batches in one piece
            return False, f"one piece per batch (joining chunks failed: {type(error).__name__})"
        if not same:
            return False, "one piece per batch (joined chunks differ from one collate)"
        padded = sorted(name for name, tensor in whole.tensors.items() if name not in whole.pad_values
                        and any(part.tensors[name].shape[1:] != tensor.shape[1:] for part in parts))
        filled = f" (empty slots of {', '.join(sorted(self._slot_fill))} filled as the processor fills them)" \
            if self._slot_fill else ""
        return True, "joined: token tensors left-padded, " + (
            f"{', '.join(padded)} padded to the largest chunk" if padded else "other tensors concatenated") + filled

    def fast_decode_unsupported(self) -> str | None:
        reason = super().fast_decode_unsupported()
        if reason is None and self.model_type not in FAST_DECODE_PROVEN:
            return f"fast decoding is not proven equal to generate for model type {self.model_type!r}"
        return reason

    # -- generation ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, batch: ModelInputs, settings: GenerationSettings) -> list[str]:
        inputs = batch.to(_first_device(self.model), self.dtype)   # normalises uint8 pixels there
        self._seed(settings)
        return _strip(self.tokenizer.batch_decode(self._new_tokens(inputs, settings), skip_special_tokens=True))

    def _image_tokens(self, width: int, height: int) -> int:
        # Asked for every item before a task starts (costs): the processor's count takes milliseconds, and
        # images of one size (or one image asked about many times) have one count.
        key = (width, height)
        if key not in self._image_token_counts:
            self._image_token_counts[key] = self._count_image_tokens(width, height)
        return self._image_token_counts[key]

    def _count_image_tokens(self, width: int, height: int) -> int:
        processor = self.processor
        try:
            counted = processor._get_num_multimodal_tokens(image_sizes=[(height, width)], **self.processor_kwargs)
            return int(counted["num_image_tokens"][0])
        except (AttributeError, KeyError, TypeError, ValueError, NotImplementedError):
            return int(getattr(processor, "image_seq_length", None) or 256)

    def estimate_cost(self, item: Item, prompt: str, image_sizes: Sequence[tuple[int, int]]) -> float:
        return float(self._prompt_tokens(prompt) + sum(self._image_tokens(w, h) for w, h in image_sizes))

    def describe(self) -> dict[str, Any]:
        image_processor = getattr(self.processor, "image_processor", None)
        return {**super().describe(), "processor": type(self.processor).__name__,
                "image_processor": type(image_processor).__name__ if image_processor is not None else None,
                "processor_kwargs": dict(self.processor_kwargs),
                "pixel_transfer": _pixel_transfer(self.pixel_normalization), "decode": self._decode_description(),
                "capabilities": self.capabilities.to_json(), "prefix_sharing": self.prefix_sharing}


def _per_channel(value: Any) -> tuple[float, ...]:
    """An image processor's mean or std (one number or one per channel) as a tuple of floats."""
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


def _probe_images(size: Any) -> list[Image.Image]:
    """Two deterministic RGB images with every byte value: one tile at the processor's size and one
    twice as wide (several tiles when the processor crops to patches)."""
    # At most 448 pixels: Qwen-VL processors' "shortest_edge" is a pixel count (3136), not a side.
    height = min(int(_get(size, "height") or _get(size, "shortest_edge") or 448), 448)
    width = min(int(_get(size, "width") or height), 448)
    images = []
    for image_width in (width, 2 * width):
        rows = torch.arange(height).view(-1, 1, 1)
        columns = torch.arange(image_width).view(1, -1, 1)
        channels = torch.tensor([0, 85, 170]).view(1, 1, 3)
        data = ((rows * 7 + columns * 13 + channels + rows * columns) % 256).to(torch.uint8)
        images.append(Image.frombytes("RGB", (image_width, height), data.numpy().tobytes()))
    return images


def _pixel_transfer(normalization: PixelNormalization | None) -> str:
    return "uint8, normalised on device" if normalization is not None else "float32"


# ------------------------------------------------------------------------------------------------
# InternVL remote-code chat models


def internvl_question(prompt: str, num_images: int) -> str:
    """The question InternVL's chat sees for a prompt with `num_images` images (module docstring)."""
    if num_images and prompt.count(IMAGE_PLACEHOLDER) == num_images:
        return prompt
    if num_images == 0:
        return prompt
    if num_images == 1:
        return IMAGE_PLACEHOLDER + "\n" + prompt
    return "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, num_images + 1)) + prompt


class InternVLTileCosts:
    """Tile counts and costs of InternVL's own tiling (`launcher.tiling`), for the adapters that tile as InternVL
    does: they hold `dynamic`, `max_num`, `image_size`, `use_thumbnail` and `num_image_token`."""

    def tile_count(self, width: int, height: int) -> int:
        """Tiles InternVL's tiling makes for an image of this size, without the image (`tiling.choose_grid`)."""
        from launcher.tiling import choose_grid

        if not self.dynamic:
            return 1
        cols, rows = choose_grid(width, height, 1, self.max_num, self.image_size)
        return cols * rows + (1 if self.use_thumbnail and cols * rows > 1 else 0)

    def estimate_cost(self, item: Item, prompt: str, image_sizes: Sequence[tuple[int, int]]) -> float:
        image_tokens = sum(self.num_image_token * self.tile_count(w, h) + 2 for w, h in image_sizes)
        return float(self._prompt_tokens(prompt) + image_tokens)


class InternVLChatAdapter(InternVLTileCosts, Adapter):
    """Remote-code InternVLChatModel: our tiling, InternVL's query, the model's `generate`."""

    name = "internvl_chat"

    def __init__(self, model: Any, tokenizer: Any, *, dynamic: bool = False, max_num: int = 6,
                 **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        config = model.config
        vision_config = getattr(config, "vision_config", None)
        image_size = getattr(config, "force_image_size", None) or _get(vision_config, "image_size")
        if not image_size:
            raise UserError(f"{type(model).__name__}: cannot tell the tile size (no force_image_size or "
                            f"vision_config.image_size in config.json)")
        self.image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
        self.use_thumbnail = bool(getattr(config, "use_thumbnail", False))
        self.dynamic, self.max_num = dynamic, max_num
        self.num_image_token = int(model.num_image_token)
        modeling = sys.modules.get(type(model).__module__)
        self._get_conv_template = getattr(modeling, "get_conv_template", None)
        if self._get_conv_template is None:
            raise UserError(f"{type(model).__module__} has no get_conv_template: not an InternVL chat model")
        self.template_name = model.template
        self.system_message = getattr(model, "system_message", None)
        # InternVL's generate() reads this; chat/batch_chat set it, and we call generate directly.
        model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        template = self._template()
        self.stop_text = template.sep.strip()
        self.eos_token_id = tokenizer.convert_tokens_to_ids(self.stop_text)

    def _template(self) -> Any:
        template = self._get_conv_template(self.template_name)
        if self.system_message is not None:
            template.system_message = self.system_message
        return template

    def query(self, prompt: str, num_patches_list: Sequence[int]) -> str:
        """InternVL's query for one item: the conversation prompt with each `<image>` expanded."""
        template = self._template()
        template.append_message(template.roles[0], internvl_question(prompt, len(num_patches_list)))
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for num_patches in num_patches_list:
            image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            query = query.replace(IMAGE_PLACEHOLDER, image_tokens, 1)
        return query

    def tiles(self, image: Image.Image) -> torch.Tensor:
        """Pixel values of one image's tiles, shape (tiles, 3, image_size, image_size): float32, normalised
        (what InternVL's `chat` takes; `tiling.pixel_values`)."""
        return IMAGENET_NORMALIZATION.apply(self.tile_bytes(image))

    def tile_bytes(self, image: Image.Image) -> torch.Tensor:
        """One image's tiles as uint8 (tiles, 3, image_size, image_size): what collate ships."""
        from launcher.tiling import tile_bytes, tile_image

        return tile_bytes(tile_image(image, self.max_num, self.image_size, self.use_thumbnail, self.dynamic),
                          self.image_size)

    def collate(self, items: Sequence[Item], prompts: Sequence[str],
                images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        queries, pixel_parts, num_patches_per_item = [], [], []
        for prompt, item_images in zip(prompts, images):
            item_pixels = [self.tile_bytes(image) for image in item_images]
            num_patches = [int(p.shape[0]) for p in item_pixels]
            queries.append(self.query(prompt, num_patches))
            pixel_parts.extend(item_pixels)
            num_patches_per_item.append(num_patches)
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(queries, return_tensors="pt", padding=True)
        tensors = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if pixel_parts:
            tensors["pixel_values"] = torch.cat(pixel_parts)
        return ModelInputs(tensors, len(queries), {"num_patches": num_patches_per_item},
                           pixel_normalization=IMAGENET_NORMALIZATION if pixel_parts else None,
                           pad_values=_token_pad_values(tensors, self.tokenizer.pad_token_id))

    @torch.inference_mode()
    def generate(self, batch: ModelInputs, settings: GenerationSettings) -> list[str]:
        # Pixels go straight to the vision tower's device and are normalised there.
        inputs = batch.to(_first_device(self.model.language_model), self.dtype,
                          pixel_device=next(self.model.vision_model.parameters()).device)
        self._seed(settings)
        output = self.model.generate(pixel_values=inputs.get("pixel_values"), input_ids=inputs["input_ids"],
                                     attention_mask=inputs["attention_mask"], eos_token_id=self.eos_token_id,
                                     **settings.generate_kwargs())
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [text.split(self.stop_text)[0].strip() for text in texts]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "processor": "launcher.tiling (InternVL dynamic_preprocess)",
                "image_processor": "launcher.tiling (PIL bicubic, ImageNet mean/std)",
                "pixel_transfer": _pixel_transfer(IMAGENET_NORMALIZATION),
                "image_size": self.image_size, "use_thumbnail": self.use_thumbnail,
                "dynamic": self.dynamic, "max_num": self.max_num, "template": self.template_name}


def _get(config: Any, name: str) -> Any:
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(name)
    return getattr(config, name, None)


# ------------------------------------------------------------------------------------------------
# Text-only models


class CausalLMAdapter(Adapter):
    """Text-only causal LMs: the tokenizer's chat template (if any), left padding, `generate`."""

    name = "causal_lm"

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            # Many causal LMs ship no pad token; any id works under the attention mask.
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def text(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        return prompt

    def collate(self, items: Sequence[Item], prompts: Sequence[str],
                images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        for item, item_images in zip(items, images):
            if item_images:
                raise DataError(f"item {item.id!r} has {len(item_images)} image(s), but "
                                f"{type(self.model).__name__} is a text-only model")
        encoded = self.tokenizer([self.text(p) for p in prompts], return_tensors="pt", padding=True)
        tensors = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        return ModelInputs(tensors, len(prompts), pad_values=_token_pad_values(tensors, self.tokenizer.pad_token_id))

    @torch.inference_mode()
    def generate(self, batch: ModelInputs, settings: GenerationSettings) -> list[str]:
        inputs = batch.to(_first_device(self.model))
        self._seed(settings)
        return _strip(self.tokenizer.batch_decode(self._new_tokens(inputs, settings), skip_special_tokens=True))

    def estimate_cost(self, item: Item, prompt: str, image_sizes: Sequence[tuple[int, int]]) -> float:
        return float(self._prompt_tokens(prompt))


# ------------------------------------------------------------------------------------------------


def is_internvl_chat_model(model: Any) -> bool:
    """A remote-code InternVLChatModel (or look-alike): chat/batch_chat and the original module names."""
    return all(hasattr(model, name) for name in ("batch_chat", "num_image_token", "vision_model", "language_model"))


def make_adapter(loaded: Any, *, dynamic: bool = False, max_num: int = 6) -> Adapter:
    """The adapter for a `loading.LoadedModel`: InternVL chat, native image-text, or causal LM."""
    from transformers.models.auto import modeling_auto

    model, tokenizer = loaded.model, loaded.tokenizer
    common = {"dtype": loaded.dtype, "device_map": loaded.device_map, "quantization": loaded.quantization}
    if getattr(loaded, "original", None) is not None:   # an original InternVL folder on the native model
        from launcher.converted_adapter import ConvertedInternVLAdapter

        return ConvertedInternVLAdapter(model, tokenizer, loaded.original, dynamic=dynamic, max_num=max_num,
                                        **common)
    if is_internvl_chat_model(model):
        return InternVLChatAdapter(model, tokenizer, dynamic=dynamic, max_num=max_num, **common)
    model_type = getattr(model.config, "model_type", "")
    if model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        processor = load_processor(str(loaded.info.path), tokenizer, model.config)
        return NativeImageTextAdapter(model, processor, dynamic=dynamic, max_num=max_num, **common)
    return CausalLMAdapter(model, tokenizer, **common)
