"""The next batch is received and joined in a thread while the current one generates (runner.JoinedBatches).

Plain-Python chunks stand in for the DataLoader's output here; the real workers, store and model run through
the same class in tests/test_chunked_batches.py, tests/test_worker_lifecycle.py and the failure matrix.
"""
from __future__ import annotations

import threading
import time

import pytest

from launcher.errors import PreemptedError, UserError
from launcher.runner import Chunk, JoinedBatches, PreparedBatch, StopFlag

pytestmark = pytest.mark.timeout(60)


def chunks(batches: int, parts: int = 2, fail_at: tuple[int, int] | None = None, error: BaseException | None = None):
    """(Chunk, PreparedBatch) of `batches` batches of `parts` chunks; `error` raised at chunk `fail_at`."""
    for number in range(batches):
        for part in range(parts):
            if (number, part) == fail_at:
                if isinstance(error, UserError):
                    yield Chunk(number, part, parts, (number * parts + part,)), error
                    continue
                raise error
            index = number * parts + part
            yield Chunk(number, part, parts, (index,)), PreparedBatch(number, [index], inputs=f"x{index}")


def join_recording(log: list):
    def join(parts):
        log.append(("join", parts[0].number, threading.current_thread().name, time.monotonic()))
        return PreparedBatch(parts[0].number, [i for p in parts for i in p.indices], [p.inputs for p in parts])
    return join


def never_collate(parts):
    raise AssertionError("collate is only for chunks that cannot be joined")


def test_the_next_batch_is_joined_in_a_thread_while_the_current_one_is_used():
    log: list = []
    batches = JoinedBatches(chunks(4), join_recording(log), never_collate, StopFlag(), ahead=True)
    seen = []
    for batch in batches:
        log.append(("generate", batch.number, threading.current_thread().name, time.monotonic()))
        time.sleep(0.2)                          # the GPU's work on this batch
        seen.append((batch.number, batch.indices, batch.inputs))
    assert seen == [(n, [2 * n, 2 * n + 1], [f"x{2 * n}", f"x{2 * n + 1}"]) for n in range(4)]
    joins = {number: (thread, at) for kind, number, thread, at in log if kind == "join"}
    starts = {number: at for kind, number, _, at in log if kind == "generate"}
    assert {thread for thread, _ in joins.values()} == {"launcher-next-batch"}
    for number in range(3):                      # batch n + 1 was joined while batch n was being used
        assert joins[number + 1][1] < starts[number] + 0.2, log
    for number in range(2):                      # and batch n + 2 only after batch n was done: one ahead
        assert joins[number + 2][1] > starts[number] + 0.15, log


def test_without_workers_batches_are_received_in_order_in_the_main_thread():
    log: list = []
    seen = [batch.number for batch in JoinedBatches(chunks(3), join_recording(log), never_collate, StopFlag(),
                                                    ahead=False)]
    assert seen == [0, 1, 2]
    assert {thread for kind, _, thread, _ in log} == {threading.main_thread().name}


@pytest.mark.parametrize("ahead", [True, False])
def test_chunks_that_cannot_be_joined_are_collated_in_the_main_thread(ahead):
    collated = []

    def collate(parts):
        collated.append((parts[0].number, threading.current_thread().name))
        return PreparedBatch(parts[0].number, [i for p in parts for i in p.indices], "whole")

    batches = JoinedBatches(chunks(2), lambda parts: None if parts[0].number == 1 else join_recording([])(parts),
                            collate, StopFlag(), ahead=ahead)
    assert [batch.inputs for batch in batches] == [["x0", "x1"], "whole"]
    assert collated == [(1, threading.main_thread().name)]


@pytest.mark.parametrize("ahead", [True, False])
def test_an_error_in_receiving_is_raised_in_the_main_thread_after_the_batches_before_it(ahead):
    batches = JoinedBatches(chunks(3, fail_at=(1, 1), error=RuntimeError("DataLoader worker (pid 7) is killed")),
                            join_recording([]), never_collate, StopFlag(), ahead=ahead)
    seen = []
    with pytest.raises(RuntimeError, match="pid 7"):
        for batch in batches:
            seen.append(batch.number)
    assert seen == [0]


@pytest.mark.parametrize("ahead", [True, False])
def test_a_workers_user_error_comes_back_as_itself(ahead):
    error = UserError("image 'a.png' of item 'q3' (data.jsonl line 4) is truncated")
    batches = JoinedBatches(chunks(3, fail_at=(2, 0), error=error), join_recording([]), never_collate, StopFlag(),
                            ahead=ahead)
    seen = []
    with pytest.raises(UserError) as raised:
        for batch in batches:
            seen.append(batch.number)
    assert raised.value is error and seen == [0, 1]


@pytest.mark.parametrize("ahead", [True, False])
def test_a_stop_signal_stops_before_the_next_batch_is_handed_out(ahead):
    stop = StopFlag()
    seen = []
    batches = JoinedBatches(chunks(4), join_recording([]), never_collate, stop, ahead=ahead)
    with pytest.raises(PreemptedError, match="SIGTERM"):
        for batch in batches:
            seen.append(batch.number)
            if batch.number == 1:
                stop.set("SIGTERM")
    assert seen == [0, 1]
    # Nobody called cancel(): the thread, holding batch 3 it can no longer hand over, ends as iterating ends.
    assert batches.wait_ended(5.0)


def test_the_thread_ends_when_the_callers_loop_body_raises_without_cancelling():
    batches = JoinedBatches(chunks(5), join_recording([]), never_collate, StopFlag(), ahead=True)

    def use(batch):
        time.sleep(0.2)                          # batch 1 is joined and waiting to be handed over meanwhile
        raise RuntimeError("generate failed")

    with pytest.raises(RuntimeError, match="generate failed"):
        for batch in batches:
            use(batch)
    assert batches.wait_ended(5.0)


def test_a_stop_after_the_last_batch_is_not_a_preemption():
    stop = StopFlag()
    seen = []
    for batch in JoinedBatches(chunks(2), join_recording([]), never_collate, stop, ahead=True):
        seen.append(batch.number)
        if batch.number == 1:
            stop.set("SIGTERM")
    assert seen == [0, 1]


def test_cancel_ends_the_thread_even_with_a_batch_waiting_to_be_taken():
    batches = JoinedBatches(chunks(5), join_recording([]), never_collate, StopFlag(), ahead=True)
    iterator = iter(batches)
    assert next(iterator).number == 0
    time.sleep(0.3)                              # batch 1 joined and waiting; the thread blocks on handing it over
    batches.cancel()
    batches._thread.join(5)
    assert not batches._thread.is_alive()
