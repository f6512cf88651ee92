"""Sharding and batching rules: pure functions, checked with tables of cases, random cases and a simulation."""
import heapq
import random

import pytest

from launcher.scheduler import WorkQueue, balanced_cost_cap, contiguous_shard, cost_batches, static_batches


@pytest.mark.parametrize("num_items,world_size,expected_sizes", [
    (5349, 8, [669] * 5 + [668] * 3),          # InternVL's rule: ranks below N mod W get one more
    (10, 3, [4, 3, 3]),
    (2, 4, [1, 1, 0, 0]),                        # more processes than items: some get none
    (0, 3, [0, 0, 0]),
    (7, 1, [7]),
])
def test_contiguous_shards_cover_every_item_once_in_order(num_items, world_size, expected_sizes):
    shards = [contiguous_shard(num_items, rank, world_size) for rank in range(world_size)]
    assert [len(shard) for shard in shards] == expected_sizes
    assert [index for shard in shards for index in shard] == list(range(num_items))


def test_contiguous_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError):
        contiguous_shard(10, 3, 3)


def test_cost_batches_put_similar_costs_together_most_expensive_first():
    costs = {0: 1.0, 1: 5.0, 2: 1.0, 3: 5.0, 4: 3.0}
    assert cost_batches([0, 1, 2, 3, 4], costs, 2) == [[1, 3], [4, 0], [2]]


def test_cost_batches_keep_dataset_order_among_equal_costs():
    costs = {index: 1.0 for index in range(7)}
    assert cost_batches(list(range(7)), costs, 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_static_batches_of_all_ranks_partition_the_items():
    indices = list(range(0, 40, 2))
    costs = {index: float(index % 7) for index in indices}
    seen = []
    for rank in range(3):
        for batch in static_batches(indices, costs, 4, rank, 3):
            assert len(batch) <= 4
            seen += batch
    assert sorted(seen) == indices


class _CounterStore:
    """The one store call WorkQueue uses, with the store's semantics (add returns the new value)."""

    def __init__(self):
        self.values = {}

    def add(self, key, amount):
        self.values[key] = self.values.get(key, 0) + amount
        return self.values[key]


def test_work_queue_hands_out_each_batch_number_once():
    store = _CounterStore()
    first, second = WorkQueue(store, "q", 5), WorkQueue(store, "q", 5)
    claimed = [first.claim(), second.claim(), first.claim(), first.claim(), second.claim(),
               second.claim(), first.claim()]
    assert claimed == [0, 1, 2, 3, 4, None, None]


def test_a_cost_cap_gives_heavy_items_small_batches():
    costs = {0: 10.0, 1: 10.0, 2: 10.0, **{index: 1.0 for index in range(3, 11)}}
    batches = cost_batches(list(range(11)), costs, batch_size=4, max_batch_cost=12.0)
    assert batches == [[0], [1], [2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_the_cost_cap_is_batch_size_items_of_median_cost():
    assert balanced_cost_cap([1.0, 2.0, 3.0, 100.0, 2.0], 8) == 16.0
    assert balanced_cost_cap([], 8) is None


def test_static_batches_with_a_cap_still_partition_every_shard():
    indices = list(range(30))
    costs = {index: (50.0 if index % 9 == 0 else 1.0) for index in indices}
    seen = sorted(index for rank in range(4)
                  for batch in static_batches(indices, costs, 5, rank, 4, max_batch_cost=5.0) for index in batch)
    assert seen == indices


# ----- the dynamic queue's tail: guided self-scheduling (cost_batches with world_size > 1)

def _plain_cost_batches(indices, costs, batch_size, max_batch_cost=None):
    """The cut without a shrinking tail, written out as the specification of world_size == 1."""
    batches, current, current_cost = [], [], 0.0
    for index in sorted(indices, key=lambda index: (-costs[index], index)):
        if len(current) == batch_size or (max_batch_cost is not None and current
                                          and current_cost + costs[index] > max_batch_cost):
            batches.append(current)
            current, current_cost = [], 0.0
        current.append(index)
        current_cost += costs[index]
    return batches + ([current] if current else [])


def _random_cases(count=200):
    """(indices, costs, batch_size, max_batch_cost, world_size): ties, skews, caps or none, odd sizes."""
    for seed in range(count):
        rng = random.Random(seed)
        num_items = rng.randint(0, 700)
        indices = rng.sample(range(3 * num_items + 1), num_items)      # sparse, unsorted dataset indices
        shape = seed % 3
        costs = {index: (float(rng.choice([1, 1, 2, 3, 5])) if shape == 0 else
                         13.0 if shape == 1 and rng.random() < 0.06 else
                         rng.uniform(0.5, 20.0) if shape == 2 else 1.0)
                 for index in indices}
        batch_size = rng.choice([1, 2, 7, 8, 16, 32, 64, 128])
        cap = balanced_cost_cap(costs.values(), batch_size) if seed % 4 else None
        yield indices, costs, batch_size, cap, rng.choice([1, 2, 3, 4, 8])


def test_every_index_lands_in_exactly_one_batch_for_any_world_size():
    for indices, costs, batch_size, cap, world_size in _random_cases():
        batches = cost_batches(indices, costs, batch_size, cap, world_size=world_size)
        flat = [index for batch in batches for index in batch]
        assert sorted(flat) == sorted(indices)
        assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_batches_run_most_expensive_first_with_ties_in_dataset_order_for_any_world_size():
    for indices, costs, batch_size, cap, world_size in _random_cases():
        batches = cost_batches(indices, costs, batch_size, cap, world_size=world_size)
        assert [index for batch in batches for index in batch] == sorted(indices, key=lambda i: (-costs[i], i))


def test_one_process_gets_exactly_the_batches_of_the_plain_cut():
    for indices, costs, batch_size, cap, _ in _random_cases():
        assert cost_batches(indices, costs, batch_size, cap, world_size=1) == \
            _plain_cost_batches(indices, costs, batch_size, cap)
        assert cost_batches(indices, costs, batch_size, cap) == _plain_cost_batches(indices, costs, batch_size, cap)


def test_with_several_processes_a_batch_above_the_floor_costs_at_most_half_a_share_of_the_work_left():
    for indices, costs, batch_size, cap, world_size in _random_cases():
        if world_size == 1:
            continue
        floor = max(1, batch_size // 4)
        remaining = sum(costs.values())
        for batch in cost_batches(indices, costs, batch_size, cap, world_size=world_size):
            cost = sum(costs[index] for index in batch)
            if len(batch) > floor:
                assert cost <= remaining / (2 * world_size) * (1 + 1e-9)
            if cap is not None and len(batch) > 1:
                assert cost <= cap
            remaining -= cost


def test_four_processes_uniform_costs_full_batches_then_a_shrinking_tail_down_to_a_quarter():
    costs = {index: 1.0 for index in range(2048)}
    sizes = [len(batch) for batch in cost_batches(list(range(2048)), costs, 64, 64.0, world_size=4)]
    # Full batches while a batch is at most 1/8 of the work left; then remaining/8 items; then 64 // 4.
    assert sizes == [64] * 25 + [56, 49, 42, 37, 33, 28, 25, 22, 19, 17] + [16] * 7 + [8]
    assert all(size >= 8 for size in sizes[:-1])        # only the leftover may be under the floor


def test_world_size_below_one_is_rejected():
    with pytest.raises(ValueError):
        cost_batches([0, 1], [1.0, 1.0], 2, world_size=0)


def _finish_times(durations, workers, claims_ahead=0):
    """Identical workers claiming batches in queue order: each claims one whenever it starts a batch, and
    `claims_ahead` more at the start (a process prepares the next batch(es) while it generates).
    Returns each worker's finish time."""
    queue = iter(durations)
    backlog = [[] for _ in range(workers)]
    for _ in range(claims_ahead):
        for worker in range(workers):
            claimed = next(queue, None)
            if claimed is not None:
                backlog[worker].append(claimed)
    events = [(0.0, worker) for worker in range(workers)]
    finish = [0.0] * workers
    while events:
        now, worker = heapq.heappop(events)
        claimed = next(queue, None)
        if claimed is not None:
            backlog[worker].append(claimed)
        if backlog[worker]:
            heapq.heappush(events, (now + backlog[worker].pop(0), worker))
        else:
            finish[worker] = now
    return finish


BATCH_OVERHEAD = 4.0   # fixed cost of one batch (one generate call), in units of one plain item


def _simulate(costs, world_size, claims_ahead, batch_world_size):
    batches = cost_batches(list(costs), costs, 64, balanced_cost_cap(costs.values(), 64),
                           world_size=batch_world_size)
    durations = [sum(costs[index] for index in batch) + BATCH_OVERHEAD for batch in batches]
    finish = _finish_times(durations, world_size, claims_ahead)
    return durations, max(finish), max(finish) - min(finish)


_UNEVEN_UNIFORM = {index: 1.0 for index in range(2200)}          # 34 full batches + 24 items: 35 batches
_SKEWED = {index: (13.0 if random.Random(index).random() < 0.06 else 1.0) for index in range(2048)}


@pytest.mark.parametrize("costs", [_UNEVEN_UNIFORM, _SKEWED], ids=["uniform", "skewed"])
@pytest.mark.parametrize("claims_ahead", [0, 1, 2])
def test_four_workers_finish_within_the_last_small_batches_instead_of_a_full_batch_apart(costs, claims_ahead):
    plain_durations, plain_end, plain_spread = _simulate(costs, 4, claims_ahead, batch_world_size=1)
    durations, end, spread = _simulate(costs, 4, claims_ahead, batch_world_size=4)
    assert plain_spread >= 0.9 * max(plain_durations[-8:])              # plain: about a full batch apart
    assert max(durations[-4:]) <= (64 // 4 + BATCH_OVERHEAD) * (1 + 1e-9)   # the last W batches are floor-sized
    assert spread <= (1 + claims_ahead) * max(durations[-8:])
    assert spread / end < plain_spread / plain_end / 2
    assert end < plain_end                                              # and the run ends sooner


def test_the_shrinking_tail_costs_little_where_full_batches_already_divide_evenly():
    costs = {index: 1.0 for index in range(2048)}                       # 32 batches: 8 per worker, no spread
    plain_durations, plain_end, _ = _simulate(costs, 4, 0, batch_world_size=1)
    durations, end, _ = _simulate(costs, 4, 0, batch_world_size=4)
    assert len(durations) - len(plain_durations) <= 4 * 4              # at most 4 extra batches per worker
    assert end <= 1.04 * plain_end
