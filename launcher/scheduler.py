"""Which items a process runs, and in which batches.

* static: InternVL's contiguous shards (ranks below N mod W get one more item), no duplicates, no padding;
  each shard is then cut into batches of similar cost.
* dynamic: every process cuts the same cost-sorted list into the same batches, longest first, the last
  ones smaller and smaller (guided self-scheduling, see `cost_batches`); processes claim batch numbers
  from an atomic counter on the coordination store until none is left, so a slow process simply takes
  fewer batches, and all of them finish within about the last few small batches of each other.

Everything but `WorkQueue` is pure: plain values in, plain values out.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence


def contiguous_shard(num_items: int, rank: int, world_size: int) -> range:
    """Indices of `rank`'s contiguous shard: the first N mod W ranks get one item more."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


# Guided self-scheduling of the dynamic queue's tail: a batch's cost stays below this fraction of the
# work left per claiming process, and holds at least batch_size // TAIL_MIN_ITEMS_DIVISOR items.
TAIL_SHARE_PER_PROCESS = 0.5
TAIL_MIN_ITEMS_DIVISOR = 4


def cost_batches(indices: Sequence[int], costs: Mapping[int, float] | Sequence[float], batch_size: int,
                 max_batch_cost: float | None = None, world_size: int = 1) -> list[list[int]]:
    """Cut `indices` into batches of items of similar cost, most expensive first.

    Sorting by cost keeps padding small (items of a batch have similar tile counts and prompt lengths) and
    puts the longest work first, so the dynamic queue's tail is made of short batches. With
    `max_batch_cost`, a batch also closes before its summed cost would pass that bound (it always holds at
    least one item): a few very heavy items then form small batches instead of one batch that outlasts
    everything else (measured on 2 GPUs: one batch of 64 held 45% of a skewed set's work). Ties keep
    dataset order, so the result is the same on every process.

    `world_size` is the number of processes claiming these batches from the dynamic queue. Above 1, the
    tail shrinks (guided self-scheduling): a batch also closes, once it holds at least
    max(1, batch_size // 4) items, before its cost would pass remaining / (2 * world_size), where
    `remaining` is the summed cost of the items not in an earlier batch (this batch's included). Why: the
    queue ends when the last claimed batch finishes, so processes finish up to one batch apart; with
    full-size batches to the end that is a whole batch (about 1 s of a 10 s run at batch 64 on an 8B
    model). With the shrinking bound the spread is about the last, small batches. The bound only bites
    where a full batch would hold more than 1 / (2 * world_size) of the work left, that is in about the
    last two rounds of full batches, so the throughput cost of smaller batches (each one's fixed overhead)
    is paid only there; the floor keeps tail batches from getting too small to keep a GPU busy. With
    `world_size` 1 (one process, and each rank's own shard under the static schedule) nothing changes.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    ordered = sorted(indices, key=lambda index: (-costs[index], index))
    tail_share = TAIL_SHARE_PER_PROCESS / world_size if world_size > 1 else None
    tail_min_items = max(1, batch_size // TAIL_MIN_ITEMS_DIVISOR)
    remaining = sum(costs[index] for index in ordered)
    batches: list[list[int]] = []
    current: list[int] = []
    current_cost = 0.0
    for index in ordered:
        full = len(current) == batch_size
        too_costly = max_batch_cost is not None and current and current_cost + costs[index] > max_batch_cost
        tail_full = (tail_share is not None and len(current) >= tail_min_items
                     and current_cost + costs[index] > remaining * tail_share)
        if full or too_costly or tail_full:
            batches.append(current)
            remaining -= current_cost
            current, current_cost = [], 0.0
        current.append(index)
        current_cost += costs[index]
    if current:
        batches.append(current)
    return batches


def balanced_cost_cap(costs: Iterable[float], batch_size: int) -> float | None:
    """The cost bound of one batch: `batch_size` items of median cost (None when there are no items)."""
    values = sorted(costs)
    if not values:
        return None
    return batch_size * values[len(values) // 2]


def static_batches(indices: Sequence[int], costs: Mapping[int, float] | Sequence[float], batch_size: int,
                   rank: int, world_size: int, max_batch_cost: float | None = None) -> list[list[int]]:
    """This rank's batches under the static schedule: its contiguous shard of `indices`, cost-grouped."""
    shard = contiguous_shard(len(indices), rank, world_size)
    return cost_batches([indices[position] for position in shard], costs, batch_size, max_batch_cost)


def plan_batches(indices: Sequence[int], costs: Mapping[int, float] | Sequence[float], batch_size: int,
                 rank: int, world_size: int, dynamic: bool) -> list[list[int]]:
    """The batches a run uses. Dynamic: one list, the same on every process (cost cap, shrinking tail),
    claimed from the queue. Static: this rank's contiguous shard of `indices`, capped by its own costs
    (only the shard's costs need to exist)."""
    if dynamic:
        cap = balanced_cost_cap((costs[index] for index in indices), batch_size)
        return cost_batches(indices, costs, batch_size, cap, world_size=world_size)
    shard_costs = (costs[indices[position]] for position in contiguous_shard(len(indices), rank, world_size))
    return static_batches(indices, costs, batch_size, rank, world_size, balanced_cost_cap(shard_costs, batch_size))


class WorkQueue:
    """Batch numbers handed out by an atomic counter on the store: each number goes to exactly one caller."""

    def __init__(self, store, key: str, num_batches: int) -> None:
        self._store = store
        self._key = key
        self.num_batches = num_batches

    def claim(self) -> int | None:
        """The next unclaimed batch number, or None when every batch is taken."""
        number = self._store.add(self._key, 1) - 1
        return number if number < self.num_batches else None

    def __iter__(self) -> Iterator[int]:
        while (number := self.claim()) is not None:
            yield number
