"""The adapter of an original InternVL folder converted to the native model (`launcher.internvl_conversion`).

It feeds `InternVLForConditionalGeneration` exactly what InternVL's own `batch_chat` feeds its
`InternVLChatModel`, so that greedy predictions are InternVL's:

* Tiles by `launcher.tiling` (InternVL's `dynamic_preprocess` with the thumbnail when config.json says
  `use_thumbnail`, bicubic resize, ImageNet mean/std), not transformers' GotOcr2 processor: that one
  always adds the thumbnail and normalises in another order, and the tile count is what the prompt
  says (see `launcher/tiling.py`).
* The query from InternVL's conversation template named in config.json (`launcher.internvl_templates`,
  system message as InternVL's model picks it), `<image>` -> `<img>` + `<IMG_CONTEXT>` x num_image_token
  x tiles + `</img>`, tokenised by the folder's tokenizer with InternVL's behaviour
  (`launcher.original_tokenizers`), left padded.
* Generation stops at the template's stop token (`sep.strip()`, what `batch_chat` passes as
  `eos_token_id`); the text is decoded with special tokens skipped, cut at the stop text and stripped.

Decoding runs on the fast greedy path (`launcher.fast_decode`) where it applies, like any native model:
the converted model's `generation_config` carries the stop token as its eos.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from eval_scripts.base import Item
from launcher.adapters import Adapter, InternVLTileCosts, ModelInputs, _first_device, _pixel_transfer, _token_pad_values
from launcher.generation import GenerationSettings
from launcher.internvl_conversion import OriginalInternVL
from launcher.internvl_templates import IMG_CONTEXT_TOKEN, build_query, get_template, system_message_for
from launcher.prefix_sharing import left_padded
from launcher.tiling import IMAGENET_NORMALIZATION


class ConvertedInternVLAdapter(InternVLTileCosts, Adapter):
    """Native InternVL converted from an original folder: InternVL's prompts, tiles and stop token."""

    name = "internvl_converted"

    def __init__(self, model: Any, tokenizer: Any, original: OriginalInternVL, *, dynamic: bool = False,
                 max_num: int = 6, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.original = original
        template = get_template(original.template_name)
        if template is None:   # read_original refuses such folders; kept as a guard for direct use
            raise ValueError(f"no conversation template {original.template_name!r}")
        self.template = template
        self.system_message = system_message_for(original.config, template)
        self.image_size, self.use_thumbnail = original.image_size, original.use_thumbnail
        self.num_image_token = original.num_image_token
        self.dynamic, self.max_num = dynamic, max_num
        self.stop_text = template.stop_text
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        stop_id = tokenizer.convert_tokens_to_ids(self.stop_text)
        # InternVL's batch_chat passes only the template's stop token as eos; generate and our greedy loop
        # both read it from here.
        model.generation_config.eos_token_id = stop_id
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        model.generation_config.bos_token_id = None

    def query(self, prompt: str, num_patches_list: Sequence[int]) -> str:
        """InternVL's query for one item (module docstring)."""
        return build_query(self.template, self.system_message, prompt, num_patches_list, self.num_image_token)

    def tile_bytes(self, image: Image.Image) -> torch.Tensor:
        """One image's tiles as uint8 (tiles, 3, size, size), normalised later on the device."""
        from launcher.tiling import tile_bytes, tile_image

        return tile_bytes(tile_image(image, self.max_num, self.image_size, self.use_thumbnail, self.dynamic),
                          self.image_size)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    def collate(self, items: Sequence[Item], prompts: Sequence[str],
                images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        if self.prefix_sharing:
            shared = self.collate_shared(items, prompts, images)
            if shared is not None:
                return shared
        item_tiles = [[self.tile_bytes(image) for image in item_images] for item_images in images]
        rows = self._rows(prompts, [[int(tiles.shape[0]) for tiles in item] for item in item_tiles])
        pad = int(self.tokenizer.pad_token_id)
        input_ids, attention_mask = left_padded(rows, pad)   # left padding, as batch_chat's tokenizer call
        tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
        pixel_parts = [tiles for item in item_tiles for tiles in item]
        if pixel_parts:
            tensors["pixel_values"] = torch.cat(pixel_parts)
        return ModelInputs(tensors, len(rows), pixel_normalization=IMAGENET_NORMALIZATION if pixel_parts else None,
                           pad_values=_token_pad_values(tensors, pad))

    def collate_shared(self, items: Sequence[Item], prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
                       *, without_repeats: bool = False) -> ModelInputs | None:
        """The shared layout (`launcher.prefix_sharing`): each group's images tiled once, its query's ids through
        `</img>` (further where its questions agree) prefilled once. None where the plain collate serves: an
        item without images, or no image asked about twice (unless `without_repeats`, see `collate_shared`)."""
        from launcher.prefix_sharing import group_key, group_prefix_length, shared_inputs

        keys = [group_key(item) for item in items]
        if not items or any(key is None for key in keys) or any(not item_images for item_images in images):
            return None
        leaders: dict[Any, int] = {}
        for position, key in enumerate(keys):
            leaders.setdefault(key, position)
        if not without_repeats and len(leaders) == len(items):
            return None
        tiles = {key: [self.tile_bytes(image) for image in images[leader]] for key, leader in leaders.items()}
        rows = self._rows(prompts, [[int(part.shape[0]) for part in tiles[key]] for key in keys])
        # Members share the prefix through their last image only where the text before it is the same too.
        members_of: dict[tuple[Any, tuple[int, ...]], list[int]] = {}
        for position, (key, row) in enumerate(zip(keys, rows)):
            image_end = len(row) - row[::-1].index(self.image_token_id) + 1     # through `</img>`
            members_of.setdefault((key, tuple(row[:image_end])), []).append(position)
        groups = [(members, torch.cat(tiles[key]), group_prefix_length([rows[p] for p in members], len(before)))
                  for (key, before), members in members_of.items()]
        return shared_inputs(items, rows, groups, int(self.tokenizer.pad_token_id), IMAGENET_NORMALIZATION)

    def _rows(self, prompts: Sequence[str], patches_per_item: Sequence[Sequence[int]]) -> list[list[int]]:
        """Each item's ids of InternVL's full query for its images' tile counts."""
        # One context token per image here; expanded to its tiles' count after tokenisation (below).
        queries = [build_query(self.template, self.system_message, prompt, [1] * len(patches), 1)
                   for prompt, patches in zip(prompts, patches_per_item)]
        return [self._expand_image_tokens(ids, patches)
                for ids, patches in zip(self.tokenizer(queries)["input_ids"], patches_per_item)]

    def _expand_image_tokens(self, ids: Sequence[int], num_patches: Sequence[int]) -> list[int]:
        """`<IMG_CONTEXT>` is an added token, so the tokenizer splits the text at it: a run of them
        tokenises to the same ids around it as one does. Tokenising one per image and repeating its id
        gives exactly the ids of InternVL's full query, without scanning thousands of context tokens
        (136 ms for a 7-tile query with InternLM2's Python tokenizer, here)."""
        expanded: list[int] = []
        images = iter(num_patches)
        for token in ids:
            patches = next(images, None) if token == self.image_token_id else None
            if patches is not None:
                expanded.extend([token] * (self.num_image_token * patches))
            else:
                expanded.append(int(token))
        return expanded

    @torch.inference_mode()
    def generate(self, batch: ModelInputs, settings: GenerationSettings) -> list[str]:
        inputs = batch.to(_first_device(self.model), self.dtype,
                          pixel_device=next(self.model.model.vision_tower.parameters()).device)
        self._seed(settings)
        texts = self.tokenizer.batch_decode(self._new_tokens(inputs, settings), skip_special_tokens=True)
        return [text.split(self.stop_text)[0].strip() if self.stop_text else text.strip() for text in texts]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "processor": "launcher.tiling (InternVL dynamic_preprocess)",
                "image_processor": "launcher.tiling (PIL bicubic, ImageNet mean/std)",
                "pixel_transfer": _pixel_transfer(IMAGENET_NORMALIZATION), "image_size": self.image_size,
                "use_thumbnail": self.use_thumbnail, "dynamic": self.dynamic, "max_num": self.max_num,
                "template": self.template.name, "decode": self._decode_description(),
                "llm": self.original.llm_architecture}


__all__ = ["ConvertedInternVLAdapter", "IMG_CONTEXT_TOKEN"]
