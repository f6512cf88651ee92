"""The loop of one process over one task: claim a batch, preprocess, generate, journal, report progress.

Preprocessing (opening images, tiling, chat template, tokenisation, padding) runs in DataLoader worker
processes (`--num-workers`), overlapped with generation; batches arrive in pinned memory on GPUs.
Under the dynamic schedule each worker claims batch numbers from the store's atomic counter itself, so a
process holds at most `num_workers` batches ahead of its generation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from eval_scripts.base import DataError, Item, Task
from launcher.errors import PreemptedError
from launcher.generation import GenerationSettings
from launcher.images import open_image
from launcher.journal import Journal
from launcher.scheduler import WorkQueue


@dataclass
class PreparedBatch:
    """One batch after CPU preprocessing. `inputs` is None when every item of the batch was skipped."""

    number: int
    indices: list[int]
    inputs: Any
    skipped: dict[int, str] = field(default_factory=dict)    # item index -> reason

    def pin_memory(self) -> "PreparedBatch":
        """Called by the DataLoader's pinning thread, so the copy to the GPU overlaps generation."""
        inputs = self.inputs.pin_memory() if self.inputs is not None else None
        return dataclasses.replace(self, inputs=inputs)


@dataclass(frozen=True)
class StoreAddress:
    """How a DataLoader worker reaches the coordination store (a fresh client: sockets don't survive fork)."""

    host: str
    port: int
    prefix: str


class Preprocessor:
    """Turns item indices into a PreparedBatch: opens images, applies the bad-item policy, collates."""

    def __init__(self, items: Sequence[Item], prompts: Sequence[str], adapter, on_bad_item: str) -> None:
        self.items = items
        self.prompts = prompts
        self.adapter = adapter
        self.on_bad_item = on_bad_item

    def __call__(self, number: int, indices: list[int]) -> PreparedBatch:
        kept, images, skipped = [], [], {}
        for index in indices:
            item = self.items[index]
            try:
                opened = [open_image(source, item.id) for source in item.images]
            except DataError as error:
                if self.on_bad_item == "error":
                    raise DataError(f"{error} (pass --on-bad-item skip to record it and go on)") from None
                skipped[index] = str(error)
                continue
            kept.append(index)
            images.append(opened)
        inputs = None
        if kept:
            inputs = self.adapter.collate([self.items[i] for i in kept], [self.prompts[i] for i in kept], images)
        return PreparedBatch(number, kept, inputs, skipped)


class _BatchStream(IterableDataset):
    def __init__(self, batches: list[list[int]], prepare: Preprocessor, queue_key: str | None,
                 store_address: StoreAddress | None, main_store) -> None:
        self.batches = batches
        self.prepare = prepare
        self.queue_key = queue_key
        self.store_address = store_address
        self.main_store = main_store

    def _numbers(self):
        worker = get_worker_info()
        if self.queue_key is None:
            if worker is None:
                return iter(range(len(self.batches)))
            return iter(range(worker.id, len(self.batches), worker.num_workers))
        store = self.main_store if worker is None else _connect_worker_store(self.store_address)
        return iter(WorkQueue(store, self.queue_key, len(self.batches)))

    def __iter__(self):
        for number in self._numbers():
            yield self.prepare(number, self.batches[number])


def _connect_worker_store(address: StoreAddress):
    import torch.distributed as dist

    client = dist.TCPStore(address.host, address.port, is_master=False, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=300))
    return dist.PrefixStore(address.prefix, client)


class StopFlag:
    """Set by SIGTERM / SIGUSR1; the loop stops at the next batch boundary (see `install_signal_handlers`)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.raised_at: float | None = None
        self._event = threading.Event()

    def set(self, name: str) -> None:
        if self.signal_name is None:
            self.signal_name, self.raised_at = name, time.monotonic()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def install_signal_handlers(flag: StopFlag) -> None:
    def handler(signum, _frame) -> None:
        flag.set(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, handler)


@dataclass
class LoopResult:
    items_done: int = 0
    batches: int = 0
    skipped: int = 0
    oom_splits: int = 0
    seconds: float = 0.0
    started_at: float = 0.0                                         # perf_counter() when the loop began
    batch_spans: list[tuple[float, float]] = field(default_factory=list)  # perf_counter() per batch: generate..journaled


def run_batches(*, task: Task, items: Sequence[Item], prompts: Sequence[str], batches: list[list[int]],
                adapter, settings: GenerationSettings, journal: Journal, on_bad_item: str, num_workers: int,
                pin_memory: bool, queue_key: str | None, store, store_address: StoreAddress | None,
                stop: StopFlag, on_batch_done: Callable[[int, list[str]], None],
                set_phase: Callable[[str, Sequence[str]], None]) -> LoopResult:
    """Run this process's share of `batches` (all of them, claimed dynamically when `queue_key` is set)."""
    prepare = Preprocessor(items, prompts, adapter, on_bad_item)
    stream = _BatchStream(batches, prepare, queue_key, store_address, store)
    workers = num_workers if batches else 0
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=1 if workers else None, persistent_workers=False,
                        worker_init_fn=_ignore_stop_signals if workers else None)
    started = time.perf_counter()
    result = LoopResult(started_at=started)
    # Workers are forked with the stop signals blocked, so one arriving before a worker has set them to
    # "ignore" stays pending and is then discarded, instead of killing the worker (torch installs a
    # default-action SIGTERM handler in each worker before worker_init_fn runs).
    with _stop_signals_blocked():
        batches_in_order = iter(loader)
    for prepared in batches_in_order:
        if stop.is_set():
            raise PreemptedError(f"stopped by {stop.signal_name}")
        ids = [items[i].id for i in prepared.indices]
        batch_started = time.perf_counter()
        set_phase("generate", ids)
        texts: list[str] = []
        if prepared.inputs is not None:
            texts, splits = _generate_splitting_on_oom(adapter, prepare, prepared, settings)
            result.oom_splits += splits
        rows = [task.prediction_row(items[i], text) for i, text in zip(prepared.indices, texts)]
        for index, reason in prepared.skipped.items():
            rows.append({**task.prediction_row(items[index], ""), "skipped": reason})
        journal.append(rows)
        set_phase("journaled", ())
        result.items_done += len(rows)
        result.skipped += len(prepared.skipped)
        result.batches += 1
        result.batch_spans.append((batch_started, time.perf_counter()))
        on_batch_done(len(rows), ids)
    result.seconds = time.perf_counter() - started
    return result


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}


def _ignore_stop_signals(_worker_id: int) -> None:
    """Slurm signals every process of a step: a worker must not die of the SIGTERM/SIGUSR1 meant for its
    rank, which stops at the next batch boundary and then ends its workers itself."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked():
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _generate_splitting_on_oom(adapter, prepare: Preprocessor, prepared: PreparedBatch,
                               settings: GenerationSettings) -> tuple[list[str], int]:
    """Generate; on CUDA out-of-memory split the batch in halves and retry, down to single items."""
    try:
        return adapter.generate(prepared.inputs, settings), 0
    except torch.cuda.OutOfMemoryError:
        if len(prepared.indices) == 1:
            raise
    torch.cuda.empty_cache()
    half = len(prepared.indices) // 2
    texts, splits = [], 1
    for part in (prepared.indices[:half], prepared.indices[half:]):
        sub = prepare(prepared.number, part)
        part_texts, part_splits = _generate_splitting_on_oom(adapter, prepare, sub, settings)
        texts += part_texts
        splits += part_splits
    return texts, splits
