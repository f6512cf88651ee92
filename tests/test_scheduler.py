"""Sharding and batching rules: pure functions, checked with tables of cases."""
import pytest

from launcher.scheduler import WorkQueue, contiguous_shard, cost_batches, static_batches


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
    from launcher.scheduler import balanced_cost_cap

    assert balanced_cost_cap([1.0, 2.0, 3.0, 100.0, 2.0], 8) == 16.0
    assert balanced_cost_cap([], 8) is None


def test_static_batches_with_a_cap_still_partition_every_shard():
    indices = list(range(30))
    costs = {index: (50.0 if index % 9 == 0 else 1.0) for index in indices}
    seen = sorted(index for rank in range(4)
                  for batch in static_batches(indices, costs, 5, rank, 4, max_batch_cost=5.0) for index in batch)
    assert seen == indices
