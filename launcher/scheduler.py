"""Which items a process runs, and in which batches.

* static: InternVL's contiguous shards (ranks below N mod W get one more item), no duplicates, no padding;
  each shard is then cut into batches of similar cost.
* dynamic: every process cuts the same cost-sorted list into the same batches, longest first, the last
  ones smaller and smaller (guided self-scheduling, see `cost_batches`); processes claim batch numbers
  from an atomic counter on the coordination store until none is left, so a slow process simply takes
  fewer batches, and all of them finish within about the last few small batches of each other.

With `groups` (index -> key; `launcher.prefix_sharing`: items asking about the same images), both
schedules keep a group's items next to each other and in one batch: a group that does not fit in what is
left of a batch starts the next one, a group larger than a batch spans consecutive batches, and static shards
end at group boundaries. The costs passed in then count a group's shared image once
(`prefix_sharing.effective_costs`).

Everything but `WorkQueue` is pure: plain values in, plain values out.
"""
from __future__ import annotations

from typing import Hashable, Iterable, Iterator, Mapping, Sequence


def contiguous_shard(num_items: int, rank: int, world_size: int) -> range:
    """Indices of `rank`'s contiguous shard: the first N mod W ranks get one item more."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _group_units(indices: Sequence[int], groups: Mapping[int, Hashable] | None) -> list[list[int]]:
    """`indices` as units scheduled together: each group's items in dataset order (groups in the order of
    their first item), or one unit per item without groups."""
    if groups is None:
        return [[index] for index in indices]
    units: dict[Hashable, list[int]] = {}
    for index in indices:
        units.setdefault(groups[index], []).append(index)
    return list(units.values())


def shard_indices(indices: Sequence[int], rank: int, world_size: int,
                  groups: Mapping[int, Hashable] | None = None) -> list[int]:
    """`rank`'s part of `indices` under the static schedule: its contiguous shard (`contiguous_shard`). With
    `groups`, items are first put next to the other items of their group (in order of each group's first
    item) and a shard ends at the group boundary nearest to where the even split would end it."""
    if groups is None:
        return [indices[position] for position in contiguous_shard(len(indices), rank, world_size)]
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    units = _group_units(indices, groups)
    ordered = [index for unit in units for index in unit]
    boundaries = [0]
    for unit in units:
        boundaries.append(boundaries[-1] + len(unit))

    def cut(shard: int) -> int:
        if shard <= 0:
            return 0
        if shard >= world_size:
            return len(ordered)
        even = contiguous_shard(len(ordered), shard, world_size).start
        return min(boundaries, key=lambda boundary: (abs(boundary - even), boundary))

    return ordered[cut(rank):max(cut(rank), cut(rank + 1))]


# Guided self-scheduling of the dynamic queue's tail: a batch's cost stays below this fraction of the
# work left per claiming process, and holds at least batch_size // TAIL_MIN_ITEMS_DIVISOR items.
TAIL_SHARE_PER_PROCESS = 0.5
TAIL_MIN_ITEMS_DIVISOR = 4


def cost_batches(indices: Sequence[int], costs: Mapping[int, float] | Sequence[float], batch_size: int,
                 max_batch_cost: float | None = None, world_size: int = 1,
                 groups: Mapping[int, Hashable] | None = None) -> list[list[int]]:
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

    With `groups`, the unit of all of the above is a group (module docstring): groups are sorted by their
    items' mean cost, a batch closes before a group that would overfill it or pass a cost bound, and a group
    larger than `batch_size` fills the current batch and as many following ones as it needs (closing early
    would leave a small batch), its last part then shared with the next groups.
    Without groups every item is its own unit: exactly the rules above.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    units = sorted(_group_units(indices, groups),
                   key=lambda unit: (-sum(costs[index] for index in unit) / len(unit), unit[0]))
    tail_share = TAIL_SHARE_PER_PROCESS / world_size if world_size > 1 else None
    tail_min_items = max(1, batch_size // TAIL_MIN_ITEMS_DIVISOR)
    remaining = sum(costs[index] for unit in units for index in unit)
    batches: list[list[int]] = []
    current: list[int] = []
    current_cost = 0.0
    for unit in units:
        unit_cost = sum(costs[index] for index in unit)
        oversize = len(unit) > batch_size     # fills whatever is open: closing first would leave a small batch
        fits = oversize or len(current) + len(unit) <= batch_size
        too_costly = (max_batch_cost is not None and current and not oversize
                      and current_cost + unit_cost > max_batch_cost)
        tail_full = (tail_share is not None and len(current) >= tail_min_items and not oversize
                     and current_cost + unit_cost > remaining * tail_share)
        if current and (not fits or len(current) == batch_size or too_costly or tail_full):
            batches.append(current)
            remaining -= current_cost
            current, current_cost = [], 0.0
        for index in unit:          # only a unit larger than a batch fills one here
            if len(current) == batch_size:
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
                   rank: int, world_size: int, max_batch_cost: float | None = None,
                   groups: Mapping[int, Hashable] | None = None) -> list[list[int]]:
    """This rank's batches under the static schedule: its contiguous shard of `indices`, cost-grouped."""
    return cost_batches(shard_indices(indices, rank, world_size, groups), costs, batch_size, max_batch_cost,
                        groups=groups)


def plan_batches(indices: Sequence[int], costs: Mapping[int, float] | Sequence[float], batch_size: int,
                 rank: int, world_size: int, dynamic: bool,
                 groups: Mapping[int, Hashable] | None = None) -> list[list[int]]:
    """The batches a run uses. Dynamic: one list, the same on every process (cost cap, shrinking tail),
    claimed from the queue. Static: this rank's contiguous shard of `indices` (`shard_indices`), capped by its
    own costs (only the shard's costs need to exist). `groups`: keep image groups together (module docstring)."""
    if dynamic:
        cap = balanced_cost_cap((costs[index] for index in indices), batch_size)
        return cost_batches(indices, costs, batch_size, cap, world_size=world_size, groups=groups)
    shard = shard_indices(indices, rank, world_size, groups)
    return static_batches(indices, costs, batch_size, rank, world_size,
                          balanced_cost_cap((costs[index] for index in shard), batch_size), groups)


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
