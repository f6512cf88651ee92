"""Questions about the same image share its work: the vision tower and the prefill of the image prefix run once.

In the benchmarks this launcher runs most questions share their image with others (GQA about 31 per image,
POPE 18, InfoVQA 5.6, VQAv2 5.4, DocVQA 4.2, MMBench's CircularEval 4 rotations), and the image tokens are
most of an item's prompt (256 per tile, up to 13 tiles with `--dynamic`). This module lets every item that
shares an image prefix with others in its batch reuse one computation of it:

1. Scheduling (`group_key`, `effective_costs`; `scheduler.plan_batches(groups=...)`): items with the same
   images form a group; the planner keeps a group's items next to each other and in one batch (a group
   larger than a batch spans consecutive batches), and the cost model counts the image part once per group.
   The runner cuts a batch into worker chunks at group boundaries (`chunk_ranges`).
2. Collate (`collate_shared`, in the DataLoader workers): per group the processor runs once, on the first
   member (images + chat text: its pixel values and token ids); the other members' token ids are the first
   member's up to the end of the image, then their own text after the image tokenised alone. That split is
   used only where the first member's own ids end with the tokens of its text after the image, that is
   where the tokenizer starts a new segment after the image (InternVL's `</img>` is a special token);
   otherwise every member goes through the processor (same ids, slower). Within a group the shared prefix
   is the longest common prefix of the members' ids (at least through the image, never a member's last
   token). A batch without any image asked about twice collates as before; in a batch with one, every chunk
   is in the shared layout (chunks of one batch join only in one layout).
3. Prefill (`SharedPrompt.prefill`, called by `fast_decode.GreedyDecoder.generate`): the full model (vision
   tower, projector, language model) over the G group prefixes into a `DynamicCache`; each layer's K/V rows
   are then copied to the B members' rows of the decoder's `StaticCache` (columns `[0, P)`); then the
   language model alone over the members' suffixes (columns `[P, P + S)`), whose last position gives the
   first new token; then the CUDA-graph decode as for any batch. Where the fast decoder does not run (a
   model split over several GPUs, `--decode generate`, bitsandbytes weights), `SharedPrompt.generate` does
   the same first two steps into a `DynamicCache` of the members' rows and hands it to transformers'
   `generate` with the members' whole rows and mask: `generate` runs only what the cache lacks (the
   suffixes), at the positions its mask gives (the running count of real tokens), then decodes as usual.

Layout of a member's cache row (P = longest prefix, S = longest suffix of the batch)::

    [ prefix padding | prefix of its group | suffix padding | its suffix | new tokens ... ]
      <------------------ P ---------------> <-------- S --------------->

Position ids count real tokens only (prefix 0..p-1, suffix p..p+s-1, then on), exactly those of the
unshared left-padded row, and the attention mask covers exactly the same tokens, so every query sees the same
keys at the same positions as without sharing: only the places of padding columns differ (they are masked).
The suffix prefill passes its own 4D mask: each suffix token sees its group's real prefix tokens and the real
suffix tokens up to itself. In float32 the tokens equal the unshared path (tests/test_prefix_sharing.py).

Batches in the shared layout are `ModelInputs` whose tensors are named `prefix_*` / `suffix_*`
(`SHARED_KEYS`); `ModelInputs.join` joins them as any batch (token tensors left-padded, the rest
concatenated; groups are matched to members by ids drawn from their first item's id, so no offsets are
needed). `unshared_tensors` turns a shared batch back into the plain one (what `collate` would have given),
for joining with plain chunks.

Where it applies (`unsupported_reason`): the transformers-native adapter over InternVL (1D positions; the
processor returns only ids, mask and pixels) and original InternVL folders converted to it (their adapter
builds the layout from InternVL's own queries and tiles: `ConvertedInternVLAdapter.collate_shared`), with
greedy decoding (no sampling, beams or `--static-cache`), on one GPU or split over several. Elsewhere the run
uses the unshared path and `run.json` says why.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, Iterator, Mapping, Sequence

import torch

if TYPE_CHECKING:
    from eval_scripts.base import Item
    from launcher.adapters import ModelInputs
    from launcher.generation import GenerationSettings

PREFIX_IDS = "prefix_input_ids"
PREFIX_MASK = "prefix_attention_mask"
SUFFIX_IDS = "suffix_input_ids"
SUFFIX_MASK = "suffix_attention_mask"
PIXELS = "pixel_values"
PREFIX_PIXEL_ROWS = "prefix_pixel_rows"
PREFIX_GROUP = "prefix_group_id"
MEMBER_GROUP = "member_group_id"
SHARED_KEYS = (PREFIX_IDS, PREFIX_MASK, SUFFIX_IDS, SUFFIX_MASK, PIXELS, PREFIX_PIXEL_ROWS, PREFIX_GROUP,
               MEMBER_GROUP)
# What the processor may return for a batch the shared layout can carry.
_PLAIN_KEYS = {"input_ids", "attention_mask", PIXELS}
# Model families whose processor output and position ids the shared layout reproduces (tested per family).
SUPPORTED_MODEL_TYPES = ("internvl",)


# ------------------------------------------------------------------------------------------------
# Where it applies


def unsupported_reason(adapter: Any, settings: "GenerationSettings") -> str | None:
    """Why this run cannot share image prefixes (the unshared path is used), or None when it can."""
    from launcher.adapters import NativeImageTextAdapter
    from launcher.converted_adapter import ConvertedInternVLAdapter

    if not isinstance(adapter, (NativeImageTextAdapter, ConvertedInternVLAdapter)):
        return (f"adapter {adapter.name!r}: only the transformers-native image-text adapter and original InternVL "
                "folders converted to it share prefixes")
    family = family_capability(adapter.model_type)
    if not family.startswith(CAPABLE):
        return f"model type {adapter.model_type!r}: {family}"
    if settings.do_sample or settings.num_beams != 1:
        return "it needs greedy decoding (not sampling or beams)"
    if settings.static_cache:
        return "--static-cache: transformers' compiled static cache is not filled from a shared prefix"
    return None


CAPABLE = "launcher.prefix_sharing"


def family_capability(model_type: str) -> str:
    """The `prefix_sharing` entry of a family's capability record (`adapters.FamilyCapabilities`)."""
    if model_type in SUPPORTED_MODEL_TYPES:
        return (f"{CAPABLE} (greedy runs, one GPU or split: each image's vision and prefill once per batch, its "
                "KV rows copied to the questions)")
    return (f"off (proven equal to the unshared path for {', '.join(SUPPORTED_MODEL_TYPES)} only; M-RoPE "
            "positions and per-image processor outputs are not carried)")


# ------------------------------------------------------------------------------------------------
# Groups and costs (pure)


def group_key(item: "Item") -> Hashable | None:
    """The images an item asks about (paths or in-memory images), or None without images: items with equal
    keys form one group."""
    if not item.images:
        return None
    try:
        key = tuple(item.images)
        hash(key)
    except TypeError:
        return None
    return key


def group_keys(items: Sequence["Item"], indices: Sequence[int]) -> dict[int, Hashable]:
    """index -> group key for `indices`; an item without images gets a key of its own."""
    keys: dict[int, Hashable] = {}
    for index in indices:
        key = group_key(items[index])
        keys[index] = key if key is not None else ("item", index)
    return keys


def group_sizes(groups: Mapping[int, Hashable]) -> dict[Hashable, int]:
    sizes: dict[Hashable, int] = {}
    for key in groups.values():
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


def effective_costs(costs: Mapping[int, float], shared_costs: Mapping[int, float], groups: Mapping[int, Hashable],
                    batch_size: int) -> dict[int, float]:
    """Each item's cost when its group's shared part (`shared_costs`: the image tokens) is paid once per group
    and batch: `cost - shared + shared / min(group size, batch_size)`. The sum over a group is then its own
    text plus one image prefix (per batch it spans), what the GPU computes."""
    sizes = group_sizes(groups)
    result = {}
    for index, cost in costs.items():
        shared = min(float(shared_costs.get(index, 0.0)), float(cost))
        members = max(1, min(sizes.get(groups.get(index), 1), batch_size))
        result[index] = float(cost) - shared + shared / members
    return result


def describe_groups(groups: Mapping[int, Hashable]) -> dict[str, Any]:
    """What run.json records about a task's groups."""
    sizes = sorted(group_sizes(groups).values())
    if not sizes:
        return {"items": 0, "groups": 0}
    return {"items": sum(sizes), "groups": len(sizes), "largest": sizes[-1],
            "mean_items_per_group": round(sum(sizes) / len(sizes), 2)}


def batch_shares(batch: Sequence[int], groups: Mapping[int, Hashable] | None) -> bool:
    """Whether a batch holds two items of one group (its chunks are then all collated in the shared layout)."""
    if groups is None:
        return False
    keys = [groups.get(index, ("item", index)) for index in batch]
    return len(set(keys)) < len(keys)


def chunk_ranges(batch: Sequence[int], parts: int, groups: Mapping[int, Hashable] | None) -> list[tuple[int, int]]:
    """`[start, end)` ranges cutting `batch` into about `parts` chunks for the preprocessing workers.

    Without groups: equal counts (`runner.chunk_size`). With groups: whole groups (a group's items are next
    to each other in the batch), about the same number of groups per chunk, since a group's image
    preprocessing is most of its CPU cost.
    """
    if not batch:
        return []
    parts = max(1, parts)
    if groups is None:
        size = -(-len(batch) // parts)
        return [(start, min(start + size, len(batch))) for start in range(0, len(batch), size)]
    starts = [position for position in range(len(batch))
              if position == 0 or groups.get(batch[position]) != groups.get(batch[position - 1])]
    per_chunk = -(-len(starts) // parts)
    bounds = starts[::per_chunk] + [len(batch)]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


# ------------------------------------------------------------------------------------------------
# Collate (DataLoader workers)


def _group_id(item_id: str) -> int:
    """A stable 63-bit id of a group, from its first member's id (unique within a task)."""
    return int.from_bytes(hashlib.blake2b(str(item_id).encode(), digest_size=8).digest(), "big") >> 1


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    length = min(len(row) for row in rows)
    for position in range(length):
        token = first[position]
        if any(row[position] != token for row in rows[1:]):
            return position
    return length


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as left-padded ids and attention mask (the processors' padding side for generation)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row):] = 1
    return ids, mask


def collate_shared(adapter: Any, items: Sequence["Item"], prompts: Sequence[str],
                   images: Sequence[Sequence[Any]], *, without_repeats: bool = False) -> "ModelInputs | None":
    """The shared layout of one chunk (module docstring, 2), or None where the plain collate should serve:
    an item without images, no image shared by two items (unless `without_repeats`: another chunk of the
    batch has one, and chunks of one batch join only in one layout), or processor outputs the layout cannot
    carry. An adapter with its own prompts and tiles (`ConvertedInternVLAdapter`) builds the layout itself."""
    own_layout = getattr(adapter, "collate_shared", None)
    if own_layout is not None:
        return own_layout(items, prompts, images, without_repeats=without_repeats)
    if not items or any(not item_images for item_images in images):
        return None
    texts = [adapter.text(prompt, len(item_images)) for prompt, item_images in zip(prompts, images)]
    marker = adapter.image_token
    members_of: dict[tuple[Hashable, str], list[int]] = {}
    for position, (item, text) in enumerate(zip(items, texts)):
        key = group_key(item)
        end = text.rfind(marker)
        if key is None or end < 0:
            return None
        end += len(marker)
        members_of.setdefault((key, text[:end]), []).append(position)
    if not without_repeats and all(len(members) == 1 for members in members_of.values()):
        return None
    from transformers.image_utils import load_image

    tokenizer = adapter.tokenizer
    deferred = adapter.pixel_normalization is not None
    model_inputs = getattr(adapter, "model_input_names", None)
    rows: list[list[int]] = [[] for _ in items]
    groups: list[tuple[list[int], torch.Tensor, int]] = []

    def encode(position: int) -> dict[str, torch.Tensor]:
        # As the adapter's collate: EXIF orientation applied and RGB (what apply_chat_template does), one list
        # of images per item, only the tensors the model takes.
        item_images = [load_image(image) for image in images[position]]
        encoded = adapter.encode([texts[position]], [item_images], as_bytes=deferred)
        return {name: value for name, value in encoded.items() if isinstance(value, torch.Tensor)
                and (model_inputs is None or name in model_inputs)}

    for (_, before), members in members_of.items():
        leader = members[0]
        tensors = encode(leader)
        if set(tensors) - _PLAIN_KEYS or PIXELS not in tensors:
            return None
        leader_ids = tensors["input_ids"][0][tensors["attention_mask"][0].bool()].tolist() \
            if "attention_mask" in tensors else tensors["input_ids"][0].tolist()
        afters = [texts[position][len(before):] for position in members]
        after_ids = tokenizer(afters, add_special_tokens=False)["input_ids"]
        boundary = len(leader_ids) - len(after_ids[0])
        composable = 0 < boundary < len(leader_ids) and leader_ids[boundary:] == list(after_ids[0])
        group_rows = []
        for position, member_after in zip(members, after_ids):
            if position == leader:
                row = leader_ids
            elif composable:
                row = leader_ids[:boundary] + list(member_after)
            else:   # the tokenizer does not split after the image: every member through the processor
                own = encode(position)
                row = own["input_ids"][0][own["attention_mask"][0].bool()].tolist()
            rows[position] = row
            group_rows.append(row)
        single = boundary if composable else len(leader_ids) - 1
        groups.append((members, tensors[PIXELS], group_prefix_length(group_rows, single)))
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return shared_inputs(items, rows, groups, pad, adapter.pixel_normalization)


def group_prefix_length(group_rows: Sequence[Sequence[int]], single: int) -> int:
    """How many leading tokens a group's members share: their longest common prefix, `single` for a group of
    one; every member keeps at least one token of its own (its last position gives the first new token)."""
    length = _common_prefix_length(group_rows) if len(group_rows) > 1 else single
    return max(1, min(length, min(len(row) for row in group_rows) - 1))


def shared_inputs(items: Sequence["Item"], rows: Sequence[Sequence[int]],
                  groups: Sequence[tuple[Sequence[int], torch.Tensor, int]], pad: int,
                  pixel_normalization: Any) -> "ModelInputs":
    """The shared layout of a batch from each item's full token ids (`rows`) and its groups: (member positions,
    the group's pixel rows, its prefix length), the first member leading."""
    from launcher.adapters import ModelInputs

    suffixes: list[list[int]] = [list(row) for row in rows]
    member_groups = [0] * len(items)
    prefix_rows, pixel_rows, group_ids = [], [], []
    for members, pixels, prefix_length in groups:
        group_id = _group_id(items[members[0]].id)
        prefix_rows.append(list(rows[members[0]][:prefix_length]))
        pixel_rows.append(int(pixels.shape[0]))
        group_ids.append(group_id)
        for position in members:
            member_groups[position] = group_id
            suffixes[position] = suffixes[position][prefix_length:]
    prefix_ids, prefix_mask = left_padded(prefix_rows, pad)
    suffix_ids, suffix_mask = left_padded(suffixes, pad)
    tensors = {PREFIX_IDS: prefix_ids, PREFIX_MASK: prefix_mask, SUFFIX_IDS: suffix_ids, SUFFIX_MASK: suffix_mask,
               PIXELS: torch.cat([pixels for _, pixels, _ in groups]),
               PREFIX_PIXEL_ROWS: torch.tensor(pixel_rows, dtype=torch.long),
               PREFIX_GROUP: torch.tensor(group_ids, dtype=torch.long),
               MEMBER_GROUP: torch.tensor(member_groups, dtype=torch.long)}
    return ModelInputs(tensors, len(items), pixel_normalization=pixel_normalization,
                       pad_values={PREFIX_IDS: pad, PREFIX_MASK: 0, SUFFIX_IDS: pad, SUFFIX_MASK: 0})


# ------------------------------------------------------------------------------------------------
# Shared <-> plain


def is_shared(tensors: Mapping[str, Any]) -> bool:
    """Whether a batch's tensors (a `ModelInputs.tensors` or what `to()` returns) are in the shared layout."""
    return PREFIX_IDS in tensors


def member_group_rows(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """For each member, the row of its group in the prefix tensors `[B]`."""
    matches = tensors[MEMBER_GROUP][:, None] == tensors[PREFIX_GROUP][None, :]
    return matches.to(torch.int8).argmax(dim=1)


def unshared_tensors(tensors: Mapping[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The plain batch of a shared one, on its device: left-padded `input_ids` / `attention_mask` as the
    processor pads them (width = the longest row) and each member's own copy of its group's pixel rows."""
    groups = member_group_rows(tensors)
    ids = torch.cat([tensors[PREFIX_IDS][groups], tensors[SUFFIX_IDS]], dim=1)
    mask = torch.cat([tensors[PREFIX_MASK][groups], tensors[SUFFIX_MASK]], dim=1)
    # Padding first, each row's tokens after it in order: a stable sort of the mask.
    order = torch.argsort(mask, dim=1, stable=True)
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    width = int(mask.sum(dim=1).max())
    ids, mask = ids[:, ids.shape[1] - width:], mask[:, mask.shape[1] - width:]
    ids = ids.masked_fill(mask == 0, pad_token_id)
    rows = tensors[PREFIX_PIXEL_ROWS]
    starts = torch.cumsum(rows, 0) - rows
    member_rows = rows[groups]
    first = torch.repeat_interleave(starts[groups], member_rows)
    offsets = torch.arange(int(member_rows.sum()), device=rows.device) - torch.repeat_interleave(
        torch.cumsum(member_rows, 0) - member_rows, member_rows)
    pixels = tensors[PIXELS].index_select(0, (first + offsets).to(tensors[PIXELS].device))
    return {"input_ids": ids, "attention_mask": mask, PIXELS: pixels}


def to_plain(batch: "ModelInputs", pad_token_id: int) -> "ModelInputs":
    """A shared `ModelInputs` as the plain collate gives it (for joining with plain chunks)."""
    import dataclasses

    tensors = unshared_tensors(batch.tensors, pad_token_id)
    return dataclasses.replace(batch, tensors=tensors,
                               pad_values={"input_ids": pad_token_id, "attention_mask": 0})


def mixed_parts_as_plain(parts: Sequence["ModelInputs"], pad_token_id: int | None) -> list["ModelInputs"]:
    """Chunks of one batch where some are shared and some plain: all of them plain (else unchanged)."""
    shared = [is_shared(part.tensors) for part in parts]
    if all(shared) or not any(shared):
        return list(parts)
    pad = int(pad_token_id or 0)
    return [to_plain(part, pad) if flag else part for part, flag in zip(parts, shared)]


# ------------------------------------------------------------------------------------------------
# Prefill (model device)


@dataclass
class SharedPrompt:
    """A shared batch on the model's device, as `fast_decode.GreedyDecoder.generate` takes it instead of a
    dict: it knows its batch size, prompt length and mask, and prefills the decoder's cache itself."""

    tensors: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.groups = member_group_rows(self.tensors)
        self.prefix_mask = self.tensors[PREFIX_MASK]
        self.suffix_mask = self.tensors[SUFFIX_MASK]
        self.prefix_lengths = self.prefix_mask.sum(dim=1)[self.groups]
        self.suffix_lengths = self.suffix_mask.sum(dim=1)

    @property
    def batch_size(self) -> int:
        return int(self.suffix_mask.shape[0])

    @property
    def prefix_width(self) -> int:
        return int(self.prefix_mask.shape[1])

    @property
    def prompt_length(self) -> int:
        """Cache columns of the prompt: the prefix region then the suffix region (module docstring)."""
        return self.prefix_width + int(self.suffix_mask.shape[1])

    @property
    def attention_mask(self) -> torch.Tensor:
        """`[B, prompt_length]`: 1 where a member's cache row holds one of its tokens."""
        return torch.cat([self.prefix_mask[self.groups], self.suffix_mask], dim=1)

    @torch.inference_mode()
    def prefill_prefixes(self, model: Any) -> Any:
        """The full model (vision tower, projector, language model) over the G group prefixes, once per group:
        a `DynamicCache` of G rows and P columns (on each layer's own device when the model is split)."""
        from transformers import DynamicCache

        from launcher.fast_decode import _cache_keyword, prompt_position_ids

        prefix_mask = self.prefix_mask
        prefix_cache = DynamicCache(config=model.config)
        model(input_ids=self.tensors[PREFIX_IDS], pixel_values=self.tensors[PIXELS],
              attention_mask=None if bool((prefix_mask == 1).all()) else prefix_mask,
              position_ids=prompt_position_ids(prefix_mask), use_cache=True, logits_to_keep=1, return_dict=True,
              **{_cache_keyword(model): prefix_cache})
        return prefix_cache

    def member_key_values(self, prefix_cache: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, `prefix_cache`'s keys and values copied to the members' rows (`[B, heads, P, dim]`), on
        that layer's device."""
        for source in prefix_cache.layers:
            rows = self.groups.to(source.keys.device)
            yield source.keys.index_select(0, rows), source.values.index_select(0, rows)

    def member_rows(self, prefix_cache: Any, config: Any) -> Any:
        """`prefix_cache`'s rows copied to the members: a `DynamicCache` from which `generate` continues with
        each member's suffix."""
        from transformers import DynamicCache

        members = DynamicCache(config=config)
        for index, (keys, values) in enumerate(self.member_key_values(prefix_cache)):
            members.update(keys, values, index)
        return members

    @torch.inference_mode()
    def generate(self, model: Any, generate_kwargs: Mapping[str, Any], pad_token_id: int) -> torch.Tensor:
        """The new tokens `[B, n]` of transformers' `generate` (greedy), each group's prefix prefilled once: the
        decode path of split models and of `--decode generate`. `generate` is given the members' whole rows (the
        layout above: group prefix, then own suffix) and their mask with the prefix columns already in the cache,
        so it runs only the suffixes, with the unshared row's positions (the mask's running count) and mask."""
        from launcher.fast_decode import _cache_keyword

        members = self.member_rows(self.prefill_prefixes(model), model.config)
        ids = torch.cat([self.tensors[PREFIX_IDS][self.groups], self.tensors[SUFFIX_IDS]], dim=1)
        output = model.generate(input_ids=ids, attention_mask=self.attention_mask, pad_token_id=pad_token_id,
                                **{_cache_keyword(model): members}, **generate_kwargs)
        return output[:, ids.shape[1]:]

    @torch.inference_mode()
    def prefill(self, decoder: Any, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill `cache` (the decoder's `StaticCache`, reset) with every member's prompt; return the first new
        tokens `[B]` and the next position ids `[B, 1]` (what `GreedyDecoder._prefill` returns)."""
        from launcher.fast_decode import _cache_keyword, _mask_values

        language_model, head = decoder.decoder, decoder.lm_head
        device = head.weight.device
        prefix_mask = self.prefix_mask
        # 1. vision + projector + language model over the group prefixes, once per group.
        prefix_cache = self.prefill_prefixes(decoder.model)
        # 2. each layer's K/V rows to the members' rows, cache columns [0, P).
        for layer, (keys, values) in zip(cache.layers, self.member_key_values(prefix_cache)):
            layer.update(keys, values)
        del prefix_cache
        # 3. the members' suffixes, cache columns [P, P + S), against their prefix and their own earlier tokens.
        suffix_ids, suffix_mask = self.tensors[SUFFIX_IDS], self.suffix_mask
        suffix_width = int(suffix_ids.shape[1])
        positions = (self.prefix_lengths[:, None] + suffix_mask.long().cumsum(-1) - 1).masked_fill(suffix_mask == 0, 0)
        cache_length = int(cache.layers[0].keys.shape[2])
        allowed = torch.zeros((self.batch_size, suffix_width, cache_length), dtype=torch.bool, device=device)
        allowed[:, :, :self.prefix_width] = prefix_mask[self.groups].bool()[:, None, :]
        causal = torch.ones((suffix_width, suffix_width), dtype=torch.bool, device=device).tril()
        allowed[:, :, self.prefix_width:self.prompt_length] = causal[None] & suffix_mask.bool()[:, None, :]
        mask_dtype, attend, blocked = _mask_values(language_model.config, head.weight.dtype)
        if mask_dtype == torch.bool:
            mask = allowed[:, None]
        else:
            mask = torch.full(allowed.shape, blocked, dtype=mask_dtype, device=device).masked_fill_(
                allowed, attend)[:, None]
        hidden = language_model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                return_dict=True, **{_cache_keyword(language_model): cache}).last_hidden_state
        first_tokens = head(hidden[:, -1, :]).argmax(-1).to(device)
        start_positions = (self.prefix_lengths + self.suffix_lengths)[:, None].to(device)
        return first_tokens, start_positions
