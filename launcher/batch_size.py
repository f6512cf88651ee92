"""`--batch-size auto` (the default): the largest batch that fits the GPU and still pays, from numbers.

After the model is loaded, for each task:

    batch = min(cap, floor((free * USABLE_FRACTION - RESERVE) / bytes per item)), rounded down to a multiple of 8

* `free`: free memory of the replica's GPUs after loading (the driver's free memory plus what PyTorch's
  allocator holds unused; for a model split over K GPUs, K times the smallest). Under the dynamic schedule
  every process uses rank 0's figure, so that all of them cut the same batch list.
* bytes per item (`item_bytes`), from the model's config and the task, with `device_map.estimate_runtime_bytes`
  (the dry run's own estimate, at batch 1): the KV cache of the longest prompt of the task plus the new
  tokens, rounded up as `fast_decode` rounds cache lengths and counted for the `fast_decode` shapes kept at
  once (3); the language model's prefill activations for that prompt; the vision tower's activations for the
  most tiles an image can take (`--dynamic --max-num M`: M + 1); the last position's logits.
* cap `MAX_AUTO_BATCH_SIZE` = 256, where more items per batch stopped paying (bench/RESULTS.md: one H200, 2B
  shape, `launch.py` from JPEG files: batch 256 146-151 items/s, 512 151; `fast_decode` at batch 128 203.5,
  256 213.3 items/s on an H100).

On the CPU (no GPU memory to fill, and a larger batch only adds padding): `CPU_BATCH_SIZE`. An explicit
`--batch-size N` wins. The choice and every number it came from are printed and written to `run.json`; the
out-of-memory split (halving a batch that does not fit) stays as the safety net for what the estimate misses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

CPU_BATCH_SIZE = 16
MAX_AUTO_BATCH_SIZE = 256
USABLE_FRACTION = 0.9
BATCH_MULTIPLE = 8
GIB = 1 << 30


@dataclass(frozen=True)
class ItemBytes:
    """GPU bytes one more item in a batch needs (module docstring)."""

    kv_cache: int
    llm_activations: int
    vision_activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.kv_cache + self.llm_activations + self.vision_activations + self.logits


@dataclass(frozen=True)
class BatchSizeChoice:
    """A task's batch size and what it came from (`run.json`: `tasks.<task>.batch_size`)."""

    batch_size: int
    source: str                        # "flag", "cpu", "cap" or "memory"
    cap: int = MAX_AUTO_BATCH_SIZE
    free_bytes: int | None = None
    reserve_bytes: int | None = None
    item_bytes: ItemBytes | None = None
    memory_bound: int | None = None
    prompt_tokens: int | None = None   # the task's longest prompt, image tokens included
    new_tokens: int | None = None
    cache_tokens: int | None = None
    tiles: int | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        if self.item_bytes is not None:
            record["item_bytes"] = {**asdict(self.item_bytes), "total": self.item_bytes.total}
        return {key: value for key, value in record.items() if value is not None}

    def describe(self) -> str:
        """One line for the log."""
        if self.source == "flag":
            return f"batch size {self.batch_size} (--batch-size)"
        if self.source == "cpu":
            return f"batch size {self.batch_size} (auto: CPU)"
        item = self.item_bytes
        assert item is not None and self.free_bytes is not None
        mib = 1 << 20
        why = f"cap {self.cap}" if self.source == "cap" else "memory"
        return (f"batch size {self.batch_size} (auto, by {why}: memory allows {self.memory_bound} = "
                f"({self.free_bytes / GIB:.1f} GiB free x {USABLE_FRACTION} - {self.reserve_bytes / GIB:.1f} GiB) / "
                f"{item.total / mib:.1f} MiB an item [KV {item.kv_cache / mib:.1f} MiB for {self.cache_tokens} "
                f"tokens, prefill {item.llm_activations / mib:.1f} MiB for {self.prompt_tokens} tokens, vision "
                f"{item.vision_activations / mib:.1f} MiB for {self.tiles} tile(s), logits {item.logits / mib:.1f} MiB])")


def memory_bound(free_bytes: int, per_item_bytes: int, reserve_bytes: int,
                 usable_fraction: float = USABLE_FRACTION) -> int:
    """Items whose runtime memory fits in `free_bytes * usable_fraction - reserve_bytes` (0 when none)."""
    if per_item_bytes < 1:
        raise ValueError(f"bytes per item must be positive, got {per_item_bytes}")
    usable = int(free_bytes * usable_fraction) - reserve_bytes
    return max(0, usable // per_item_bytes)


def choose_batch_size(free_bytes: int | None, per_item_bytes: int | None, *, cap: int = MAX_AUTO_BATCH_SIZE,
                      reserve_bytes: int = GIB, multiple: int = BATCH_MULTIPLE) -> tuple[int, str, int | None]:
    """`(batch size, source, memory bound)`: `CPU_BATCH_SIZE` without GPU memory (`free_bytes` None); else
    the memory bound capped at `cap`, rounded down to a multiple of `multiple` when at least that, never 0."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if free_bytes is None or per_item_bytes is None:
        return min(CPU_BATCH_SIZE, cap), "cpu", None
    bound = memory_bound(free_bytes, per_item_bytes, reserve_bytes)
    batch = min(bound, cap)
    if batch >= multiple:
        batch -= batch % multiple
    return max(1, batch), ("cap" if bound >= cap else "memory"), bound


def item_bytes(config: Any, dtype_bytes: int, prompt_tokens: int, new_tokens: int, tiles: int,
               kept_shapes: int | None = None, length_bucket: int | None = None) -> tuple[ItemBytes, int]:
    """Bytes of one item (module docstring) and the cache length they assume, from the model's config.

    `prompt_tokens`: the longest prompt, image tokens included; `tiles`: the most tiles of an item's images.
    """
    from launcher.device_map import estimate_runtime_bytes, image_tokens_per_tile
    from launcher.fast_decode import DEFAULT_LENGTH_BUCKET, DEFAULT_MAX_SHAPES, bucketed_cache_length

    kept_shapes = DEFAULT_MAX_SHAPES if kept_shapes is None else kept_shapes
    length_bucket = DEFAULT_LENGTH_BUCKET if length_bucket is None else length_bucket
    tiles = max(1, tiles)
    image_tokens = image_tokens_per_tile(config) * tiles
    text_tokens = max(0, prompt_tokens - image_tokens)
    prefill_tokens = max(1, image_tokens + text_tokens)
    cache_tokens = bucketed_cache_length(prefill_tokens, max(1, new_tokens), length_bucket)
    runtime = estimate_runtime_bytes(config, 1, tiles, cache_tokens - prefill_tokens, dtype_bytes, text_tokens)
    kv = runtime.kv_cache_per_layer * runtime.num_layers * max(1, kept_shapes)
    return ItemBytes(kv, runtime.llm_activations, runtime.vision_activations, runtime.logits), cache_tokens


def free_bytes(devices: Sequence[Any]) -> int | None:
    """Free memory of a replica's GPUs (module docstring), None when it has none."""
    import torch

    gpus = [torch.device(device) for device in devices if torch.device(device).type == "cuda"]
    if not gpus:
        return None
    free = []
    for gpu in gpus:
        driver_free, _ = torch.cuda.mem_get_info(gpu)
        unused_cache = torch.cuda.memory_reserved(gpu) - torch.cuda.memory_allocated(gpu)
        free.append(int(driver_free + max(0, unused_cache)))
    return min(free) * len(free)


def auto_batch_size(config: Any, dtype_bytes: int, free: int | None, prompt_tokens: int, new_tokens: int,
                    tiles: int) -> BatchSizeChoice:
    """`--batch-size auto` for one task (module docstring)."""
    from launcher.device_map import CUDA_OVERHEAD_BYTES

    if free is None:
        batch, source, _ = choose_batch_size(None, None)
        return BatchSizeChoice(batch, source)
    per_item, cache_tokens = item_bytes(config, dtype_bytes, prompt_tokens, new_tokens, tiles)
    batch, source, bound = choose_batch_size(free, per_item.total, reserve_bytes=CUDA_OVERHEAD_BYTES)
    return BatchSizeChoice(batch, source, free_bytes=free, reserve_bytes=CUDA_OVERHEAD_BYTES, item_bytes=per_item,
                           memory_bound=bound, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                           cache_tokens=cache_tokens, tiles=tiles)
