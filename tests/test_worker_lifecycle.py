"""Preprocessing workers: they ignore Slurm's SIGTERM, yet never outlive their rank or its failure.

Real DataLoader worker processes (fork), no mocks: a worker busy in a long chunk must end when its
parent asks (`shut_down_workers`: a grace, then SIGKILL) or dies (PR_SET_PDEATHSIG), and a user error
raised inside a worker reaches the caller as its own one-line message.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from eval_scripts.base import DataError, Item, Task
from launcher.adapters import ModelInputs
from launcher.generation import GenerationSettings
from launcher.journal import Journal, read_journal
from launcher.runner import StopFlag, _prepare_worker, run_batches, shut_down_workers
from tests.runs import ROOT, child_env

pytestmark = pytest.mark.timeout(120)


class _Sleepy(Dataset):
    """Each item takes `seconds` to prepare: a worker is busy with it, deaf to its queue."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> int:
        time.sleep(self.seconds)
        return index


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_until_gone(pids, timeout: float) -> float:
    started = time.monotonic()
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() - started < timeout, f"still alive after {timeout} s: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)
    return time.monotonic() - started


def _sleepy_loader(workers: int, seconds: float) -> DataLoader:
    from functools import partial

    return DataLoader(_Sleepy(seconds), batch_size=None, num_workers=workers, prefetch_factor=1,
                      worker_init_fn=partial(_prepare_worker, os.getpid()))


def test_shut_down_workers_ends_busy_workers_that_ignore_sigterm_within_the_grace():
    chunks = iter(_sleepy_loader(workers=3, seconds=60))
    pids = [worker.pid for worker in chunks._workers]
    time.sleep(1.5)                          # each worker is now inside a 60 s item
    for pid in pids:
        os.kill(pid, signal.SIGTERM)         # what Slurm sends every process of a step: ignored
    time.sleep(0.5)
    assert all(_alive(pid) for pid in pids)
    started = time.monotonic()
    shut_down_workers(chunks, grace_seconds=0.5)
    assert time.monotonic() - started < 10
    assert not any(_alive(pid) for pid in pids)
    shut_down_workers(chunks)                # a second call (another way out) is a no-op


def test_idle_workers_leave_when_asked_before_the_grace_ends():
    chunks = iter(_sleepy_loader(workers=2, seconds=0.0))
    assert next(chunks) == 0
    time.sleep(1.0)                          # prefetched items done: both workers wait on their queues
    pids = [worker.pid for worker in chunks._workers]
    started = time.monotonic()
    shut_down_workers(chunks, grace_seconds=20)
    assert time.monotonic() - started < 10   # they left on the request, not at the grace's SIGKILL
    assert [worker.exitcode for worker in chunks._workers] == [0, 0]
    assert not any(_alive(pid) for pid in pids)


_PARENT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tests.test_worker_lifecycle import _sleepy_loader
chunks = iter(_sleepy_loader(workers=2, seconds=120))
print(" ".join(str(worker.pid) for worker in chunks._workers), flush=True)
next(chunks)
"""


def test_a_worker_dies_with_its_rank_even_mid_chunk():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(ROOT)], env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(1.5)                      # both inside a 120 s item: torch's own parent check waits on it
        parent.kill()
        parent.wait()
        seconds = _wait_until_gone(pids, timeout=10)
        print(f"\nworkers gone {seconds:.2f} s after their parent's kill -9")
    finally:
        parent.kill()
        for pid in pids if "pids" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


class _Task(Task):
    name = "lifecycle"


class _EchoAdapter:
    """Answers each item with the number of its prompt (carried as a one-token batch row)."""

    def collate(self, items, prompts, images):
        ids = torch.tensor([[int(prompt.split()[-1])] for prompt in prompts])
        return ModelInputs(tensors={"input_ids": ids}, size=len(prompts), pad_values={"input_ids": 0})

    def generate(self, batch, settings):
        return [f"answer {int(row[0])}" for row in batch.tensors["input_ids"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_in_a_worker_reaches_the_caller_as_its_own_one_line_message(workers, tmp_path):
    good = tmp_path / "good.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    items = [Item(id=f"q{index}", question=f"question {index}", images=(corrupt if index == 5 else good,))
             for index in range(8)]
    journal = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(DataError) as raised:
        run_batches(task=_Task(), items=items, prompts=[item.question for item in items],
                    batches=[[0, 1], [2, 3], [4, 5], [6, 7]], adapter=_EchoAdapter(), settings=GenerationSettings(),
                    journal=journal, on_bad_item="error", num_workers=workers, pin_memory=False, queue_key=None,
                    store=torch.distributed.HashStore(), stop=StopFlag(), on_batch_done=lambda *_: None,
                    set_phase=lambda *_: None)
    journal.close()
    message = str(raised.value)
    assert message.startswith("item 'q5': cannot read image") and str(corrupt) in message
    assert "--on-bad-item skip" in message and "\n" not in message and "Caught" not in message
    rows = read_journal(journal.path)
    assert [(row["id"], row["prediction"]) for row in rows] == [(f"q{i}", f"answer {i}") for i in range(4)]


def test_the_thread_receiving_the_next_batch_is_gone_when_a_failed_loop_returns(tmp_path):
    """generate fails while the next batch is still being prepared in a worker: the thread waiting for it
    inside the DataLoader must end with the loop (alive at interpreter exit, it aborted the process)."""
    import threading

    class SlowThenFailing(_EchoAdapter):
        def collate(self, items, prompts, images):
            if int(prompts[0].split()[-1]) >= 2:
                time.sleep(3)                    # the next batch: still in a worker when generate fails
            return super().collate(items, prompts, images)

        def generate(self, batch, settings):
            raise RuntimeError("injected: generate fails")

    items = [Item(id=f"q{index}", question=f"question {index}") for index in range(8)]
    journal = Journal(tmp_path / "journal.jsonl")
    before = set(threading.enumerate())          # only this loop's thread counts, not another test's
    with pytest.raises(RuntimeError, match="injected"):
        run_batches(task=_Task(), items=items, prompts=[item.question for item in items],
                    batches=[[0, 1], [2, 3], [4, 5], [6, 7]], adapter=SlowThenFailing(),
                    settings=GenerationSettings(), journal=journal, on_bad_item="error", num_workers=2,
                    pin_memory=False, queue_key=None, store=torch.distributed.HashStore(), stop=StopFlag(),
                    on_batch_done=lambda *_: None, set_phase=lambda *_: None)
    journal.close()
    started = [thread for thread in set(threading.enumerate()) - before if thread.name == "launcher-next-batch"]
    assert not started
