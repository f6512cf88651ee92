"""The loop of one process over one task: claim a batch, preprocess, generate, journal, report progress.

Preprocessing (opening images, tiling, chat template, tokenisation, padding) runs in DataLoader worker
processes (`--num-workers`), overlapped with generation. Each batch is prepared in chunks, one per worker,
and joined (left padding to the longest chunk) into pinned memory: a batch of B items is ready after the
time of B / workers items instead of B (measured on an H100 host: 17.7 ms an item on one core, so a batch
of 256 took 4.5 s in one worker while the GPU idled). The join gives exactly the tensors one collate of
the whole batch gives.

Batch numbers come from the sampler: this process's own batches under the static schedule, the store's
atomic counter under the dynamic one. The DataLoader asks for the next chunk only as it hands one out, and
the batch after the one being generated is received and joined in a thread meanwhile (`JoinedBatches`), so
a process holds about two batches beyond the one it is generating (one joined, one being prepared): at the
end of a dynamic run no process sits on more claimed batches than that.

The workers ignore SIGTERM / SIGUSR1 (Slurm signals every process of a step; the rank decides when to
stop), so they are ended explicitly on every way out of the loop (`shut_down_workers`), and the kernel
kills a worker whose rank dies (PR_SET_PDEATHSIG). A user error met in a worker (a corrupt image) comes
back as its own one-line message, not wrapped in torch's worker traceback.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from eval_scripts.base import DataError, Item, Task
from launcher.adapters import ModelInputs
from launcher.errors import PreemptedError, UserError
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


class Preprocessor:
    """Turns item indices into a PreparedBatch: opens images, applies the bad-item policy, collates."""

    def __init__(self, items: Sequence[Item], prompts: Sequence[str], adapter, on_bad_item: str) -> None:
        self.items = items
        self.prompts = prompts
        self.adapter = adapter
        self.on_bad_item = on_bad_item

    def __call__(self, number: int, indices: list[int], shared: bool = False) -> PreparedBatch:
        """`shared`: the batch these items belong to asks about an image more than once, so every chunk of it
        is collated in the shared layout (`prefix_sharing`), those without a repeat of their own included."""
        kept, images, skipped = [], [], {}
        decoded: dict[Any, Any] = {}     # an image asked about by several items is decoded once
        for index in indices:
            item = self.items[index]
            try:
                opened = [self._open(source, item.id, decoded) for source in item.images]
            except DataError as error:
                if self.on_bad_item == "error":
                    raise DataError(f"{error} (pass --on-bad-item skip to record it and go on)") from None
                skipped[index] = str(error)
                continue
            kept.append(index)
            images.append(opened)
        inputs = None
        if kept:
            items, prompts = [self.items[i] for i in kept], [self.prompts[i] for i in kept]
            if shared and getattr(self.adapter, "prefix_sharing", False):
                from launcher.prefix_sharing import collate_shared

                inputs = collate_shared(self.adapter, items, prompts, images, without_repeats=True)
            if inputs is None:
                inputs = self.adapter.collate(items, prompts, images)
        return PreparedBatch(number, kept, inputs, skipped)

    @staticmethod
    def _open(source: Any, item_id: str, decoded: dict[Any, Any]) -> Any:
        try:
            if source in decoded:
                return decoded[source]
        except TypeError:        # an unhashable source: decode it each time
            return open_image(source, item_id)
        decoded[source] = open_image(source, item_id)
        return decoded[source]


@dataclass(frozen=True)
class Chunk:
    """Part `part` of `parts` of batch `number`: the DataLoader's unit of work."""

    number: int
    part: int
    parts: int
    indices: tuple[int, ...]
    shared: bool = False      # the batch asks about an image twice (`Preprocessor`)


# The first batch of a process is generated in two pieces when its distinct images (image groups; items
# without sharing) hold this many image tokens and there are workers: a lead piece of a quarter of it, then
# the rest (`lead_split`). Measured as 64 one-tile images of 256 tokens (InternVL); a 13-tile page counts 13.
LEAD_MIN_IMAGE_TOKENS = 64 * 256
IMAGE_TOKENS_UNKNOWN = 256        # an image whose token count the caller did not give: one InternVL tile


def lead_split(batch: Sequence[int], groups: Mapping[int, Hashable] | None,
               image_tokens: Mapping[int, float] | None = None) -> list[Sequence[int]]:
    """The first batch cut into a lead piece of about a quarter and the rest, so the GPU starts after a
    quarter of the first batch's preprocessing (each worker then prepares B / 4 / workers items, 0.14 s for a
    batch of 256 at 17.7 ms an item over 8 workers, instead of 0.57 s) and the rest is prepared while the lead
    piece generates. The cut falls on an image-group boundary where one lies between a quarter and a half
    (sharing keeps whole groups), else at the quarter (a group may span batches anyway).

    A batch whose distinct images hold fewer than `LEAD_MIN_IMAGE_TOKENS` (`image_tokens`: each item's image
    tokens; an image counts once however many questions ask about it) stays whole: its preprocessing is short
    already (opening and tiling images is most of it), and each piece is a one-off batch shape that decodes
    without a CUDA graph. On an H200, 2B shape: the POPE-like set (14 one-tile images a batch of 256) lost 15%
    when split, distinct images gained 10% and their first batch started after 0.66-0.74 s instead of
    1.47-1.51 s (bench/RESULTS.md). Image tokens, not images, because a DocVQA page of 13 tiles takes about 13
    times a one-tile image to prepare: 44 such pages (under 64 images) kept the first batch 1.0-1.4 s away."""
    first_of_image: dict[Hashable, int] = {}      # an image asked about by several items counts once
    for index in batch:
        first_of_image.setdefault((groups or {}).get(index, ("item", index)), index)
    tokens = image_tokens or {}
    weight = sum(float(tokens.get(index, IMAGE_TOKENS_UNKNOWN)) for index in first_of_image.values())
    if weight < LEAD_MIN_IMAGE_TOKENS:
        return [batch]
    cut = len(batch) // 4
    if groups is not None:
        boundaries = [position for position in range(cut, len(batch) // 2 + 1)
                      if groups.get(batch[position]) != groups.get(batch[position - 1])]
        cut = boundaries[0] if boundaries else cut
    return [batch[:cut], batch[cut:]]


class _ChunkKeys:
    """The DataLoader's sampler: chunk keys of this process's batches, claimed lazily, in order.
    Every batch is cut into `workers` chunks (fewer when it has fewer items), whatever its size: a
    batch of a few heavy items (13 tiles each) is spread over the workers as a full batch is. With workers,
    the first batch this process takes is generated in two pieces (`lead_split`), each cut into chunks."""

    def __init__(self, batches: list[list[int]], workers: int, queue: WorkQueue | None,
                 groups: Mapping[int, Hashable] | None = None, lead: bool = False,
                 image_tokens: Mapping[int, float] | None = None) -> None:
        self.batches = batches
        self.workers = workers
        self.queue = queue
        self.groups = groups      # image groups (prefix sharing): chunks end at group boundaries
        self.lead = lead
        self.image_tokens = image_tokens

    def __iter__(self):
        from launcher.prefix_sharing import batch_shares, chunk_ranges

        numbers = iter(self.queue) if self.queue is not None else iter(range(len(self.batches)))
        for taken, number in enumerate(numbers):
            batch = self.batches[number]
            pieces = lead_split(batch, self.groups, self.image_tokens) if self.lead and taken == 0 else [batch]
            for piece in pieces:
                ranges = chunk_ranges(piece, self.workers, self.groups)
                shared = batch_shares(piece, self.groups)
                for part, (start, end) in enumerate(ranges):
                    yield Chunk(number, part, len(ranges), tuple(piece[start:end]), shared)


class _Chunks(Dataset):
    def __init__(self, prepare: Preprocessor) -> None:
        self.prepare = prepare

    def __getitem__(self, chunk: Chunk) -> tuple[Chunk, PreparedBatch | UserError]:
        try:
            return chunk, self.prepare(chunk.number, list(chunk.indices), chunk.shared)
        except UserError as error:
            # Handed back as a value: raised in a worker, torch would re-raise it wrapped in its own
            # traceback ("Caught DataError in DataLoader worker process 0 ..."); a user error is one line.
            return chunk, error


def join_parts(parts: Sequence[PreparedBatch], pin_memory: bool, pad_token_id: int | None) -> PreparedBatch | None:
    """One batch from its chunks, in order: the tensors one collate of all its items would give; None when
    the chunks cannot be joined (some with images, some without: `collate_whole` then). No tokenizer call, so
    it may run in a thread beside the main thread's generation (`JoinedBatches`)."""
    from launcher.prefix_sharing import mixed_parts_as_plain

    inputs = mixed_parts_as_plain([part.inputs for part in parts if part.inputs is not None], pad_token_id)
    try:
        joined = ModelInputs.join(inputs, pin_memory=pin_memory) if inputs else None
    except ValueError:
        return None
    return PreparedBatch(parts[0].number, [i for part in parts for i in part.indices], joined,
                         {i: reason for part in parts for i, reason in part.skipped.items()})


def collate_whole(parts: Sequence[PreparedBatch], pin_memory: bool, prepare: Preprocessor) -> PreparedBatch:
    """The batch of chunks that cannot be joined, collated again as one piece (in this process)."""
    whole = prepare(parts[0].number, [i for part in parts for i in part.indices])
    inputs = whole.inputs.pin_memory() if pin_memory and whole.inputs is not None else whole.inputs
    return PreparedBatch(parts[0].number, whole.indices, inputs,
                         {**{i: reason for part in parts for i, reason in part.skipped.items()}, **whole.skipped})


def _pad_token_id(prepare: Preprocessor) -> int | None:
    return getattr(getattr(getattr(prepare, "adapter", None), "tokenizer", None), "pad_token_id", None)


MAX_AUTO_WORKERS = 8


def default_num_workers(local_processes: int, cpus: int | None = None) -> int:
    """`--num-workers auto`: the CPUs this process may use, shared among the node's processes, one left for
    the process itself, at most `MAX_AUTO_WORKERS`. Preprocessing took 17.7 ms an item on one core of an
    H100 host, so 2 workers would cap a GPU near 110 items/s; 8 deliver ~450."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_processes) - 1))


def chunk_size(batch_size: int, num_workers: int) -> int:
    """Items per chunk: a batch spread over the workers (one chunk per worker)."""
    return max(1, -(-batch_size // max(1, num_workers)))


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


def ignore_stop_signals() -> None:
    """After the verdict: SIGTERM / SIGUSR1 (torchrun's agent SIGTERMs the survivors once a worker has
    failed) must not turn the exit code into a death by signal while Python tears down, which takes
    seconds with torch loaded. A handler would not help: Python resets its own handlers to the default
    action at finalization, but leaves an "ignore" in place."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


@dataclass
class LoopResult:
    items_done: int = 0
    batches: int = 0
    skipped: int = 0
    oom_splits: int = 0
    seconds: float = 0.0
    join_seconds: float = 0.0                                       # joining chunks into pinned batches
    started_at: float = 0.0                                         # perf_counter() when the loop began
    batch_spans: list[tuple[float, float]] = field(default_factory=list)  # perf_counter() per batch: generate..journaled


def run_batches(*, task: Task, items: Sequence[Item], prompts: Sequence[str], batches: list[list[int]],
                adapter, settings: GenerationSettings, journal: Journal, on_bad_item: str, num_workers: int,
                pin_memory: bool, queue_key: str | None, store, stop: StopFlag,
                on_batch_done: Callable[[int, list[str]], None],
                set_phase: Callable[[str, Sequence[str]], None],
                groups: Mapping[int, Hashable] | None = None, join_ahead: bool = True,
                image_tokens: Mapping[int, float] | None = None) -> LoopResult:
    """Run this process's share of `batches` (all of them, claimed dynamically when `queue_key` is set).
    `groups`: the image groups the batches keep together (prefix sharing), so chunks do too. `image_tokens`:
    each item's image tokens (the adapter's estimate), which decide the first batch's lead piece. `join_ahead`
    False is the loop without `JoinedBatches` and without the lead piece (`lead_split`): every batch received
    and joined in this thread after the one before it (a bench's comparison)."""
    prepare = Preprocessor(items, prompts, adapter, on_bad_item)
    workers = num_workers if batches else 0
    work_queue = WorkQueue(store, queue_key, len(batches)) if queue_key is not None else None
    # Without workers a batch is prepared in one piece (one "worker"): chunks would only add joins. So it is
    # for a model family whose chunks cannot be joined (the adapter's capability record says so).
    joins = getattr(getattr(adapter, "capabilities", None), "joins_chunks", True)
    sampler = _ChunkKeys(batches, max(1, workers) if joins else 1, work_queue, groups,
                         lead=join_ahead and workers > 0, image_tokens=image_tokens)
    loader = DataLoader(_Chunks(prepare), sampler=sampler, batch_size=None,
                        num_workers=workers, pin_memory=False, prefetch_factor=1 if workers else None,
                        persistent_workers=False,
                        worker_init_fn=functools.partial(_prepare_worker, os.getpid()) if workers else None)
    started = time.perf_counter()
    result = LoopResult(started_at=started)
    # Workers are forked with the stop signals blocked, so one arriving before a worker has set them to
    # "ignore" stays pending and is then discarded, instead of killing the worker (torch installs a
    # default-action SIGTERM handler in each worker before worker_init_fn runs).
    with _stop_signals_blocked():
        chunks_in_order = iter(loader)
    pad_token_id = _pad_token_id(prepare)    # read here: the thread touches no tokenizer
    ahead = JoinedBatches(chunks_in_order, lambda parts: join_parts(parts, pin_memory, pad_token_id),
                          lambda parts: collate_whole(parts, pin_memory, prepare), stop,
                          ahead=join_ahead and workers > 0)
    try:
        for prepared in ahead:
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
    finally:
        # Every way out (done, a user error, an exception in generate, a stop signal, Ctrl-C): the workers
        # go now. Left to Python's exit handler they would be sent SIGTERM, which they ignore, and joined
        # forever.
        ahead.cancel()
        shut_down_workers(chunks_in_order)
        ahead.wait_ended(JOIN_THREAD_END_SECONDS)
        result.join_seconds = ahead.join_seconds
    result.seconds = time.perf_counter() - started
    return result


class JoinedBatches:
    """The batches of `chunks` (the DataLoader's output: (Chunk, PreparedBatch | UserError) in order), each
    joined by `join` (`join_parts`; where it gives None, `collate` collates the chunks again as one piece).

    With preprocessing workers (`ahead=True`) the chunks are received and joined one batch ahead, in a
    thread: while the GPU generates batch N, this thread receives the chunks of batch N+1 and joins them
    into pinned memory (0.05-0.14 s a batch of 256 one-tile items on an H200 host: 8% of the run while it
    waited between batches; bench/RESULTS.md). The thread calls no tokenizer (a fast tokenizer used by two
    threads at once fails): `collate` runs in the main thread. Without workers the DataLoader would
    preprocess in that thread with the main process's tokenizer, so batches are then received in order in
    the main thread, as before.

    Iterating (main thread) yields the batches; an exception in the thread (a worker that died, a failed
    join) and a user error from a worker are raised in the main thread, at the batch they belong to. A stop
    signal is acted on as a batch is ready, before it is handed out (PreemptedError). `cancel()` (called as
    iterating ends, however it ends, and by the loop on every way out) makes the thread drop what it holds and
    end; it never blocks the process (a daemon thread, never joined) while the caller shuts the workers down.
    Under the dynamic schedule the process holds one batch more than without the thread (DECISIONS: "Joining
    the next batch in a thread").
    """

    _END = object()

    def __init__(self, chunks: Any, join: Callable[[list[PreparedBatch]], PreparedBatch | None],
                 collate: Callable[[list[PreparedBatch]], PreparedBatch], stop: "StopFlag", *, ahead: bool,
                 poll_seconds: float = 0.1) -> None:
        self._chunks = chunks
        self._join = join
        self._collate = collate
        self._stop = stop
        self._ahead = ahead
        self._poll = poll_seconds
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._taken = threading.Semaphore(0)     # released as the main thread takes a batch
        self._cancelled = threading.Event()
        self.join_seconds = 0.0
        # Pinned memory is allocated in the thread: on the main thread's GPU, not on GPU 0 (a context there).
        self._device = torch.cuda.current_device() if ahead and torch.cuda.is_initialized() else None
        self._thread = threading.Thread(target=self._receive, name="launcher-next-batch", daemon=True)

    def __iter__(self):
        values = self._from_thread() if self._ahead else self._joined()
        try:
            for value in values:
                if isinstance(value, list):          # chunks that cannot be joined
                    collating = time.perf_counter()
                    value = self._collate(value)
                    self.join_seconds += time.perf_counter() - collating
                if self._stop.is_set():
                    raise PreemptedError(f"stopped by {self._stop.signal_name}")
                yield value
        finally:
            # However iterating ends (the last batch, an error raised here or in the caller's loop body, the
            # iterator dropped), the thread must not wait for ever to hand over a batch nobody will take.
            self.cancel()

    def cancel(self) -> None:
        self._cancelled.set()

    def wait_ended(self, timeout: float) -> bool:
        """After `cancel()` and the workers' shutdown: wait up to `timeout` for the thread to end (it must not
        be alive at interpreter exit); whether it has. Never longer: the caller goes on either way."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _joined(self):
        """(main thread or the thread) Joined batches, or a batch's chunks where `join` gives None."""
        parts: list[PreparedBatch] = []
        for chunk, part in self._chunks:
            if isinstance(part, UserError):
                raise part
            parts.append(part)
            if chunk.part + 1 < chunk.parts:
                continue
            joining = time.perf_counter()
            joined = self._join(parts)
            self.join_seconds += time.perf_counter() - joining
            yield joined if joined is not None else parts
            parts = []

    def _from_thread(self):
        self._thread.start()
        while True:
            try:
                value = self._ready.get(timeout=self._poll)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():   # it puts a last value: never here
                    raise RuntimeError("the thread preparing batches ended without a batch or an error") from None
                continue
            if value is self._END:
                return
            if isinstance(value, BaseException):
                raise value
            self._taken.release()
            yield value

    def _receive(self) -> None:
        try:
            if self._device is not None:
                torch.cuda.set_device(self._device)
            for value in self._joined():
                # One batch ahead, no more: the chunks of the batch after it are asked for (and, under the
                # dynamic schedule, claimed) only once the main thread has taken this one.
                if not (self._put(value) and self._wait_until_taken()):
                    return
            self._put(self._END)
        except BaseException as error:   # handed to the main thread, which raises it
            self._put(error)

    def _put(self, value: Any) -> bool:
        while not self._cancelled.is_set():
            try:
                self._ready.put(value, timeout=self._poll)
                return True
            except queue.Full:
                continue
        return False

    def _wait_until_taken(self) -> bool:
        while not self._cancelled.is_set():
            if self._taken.acquire(timeout=self._poll):
                return True
        return False


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}
_PR_SET_PDEATHSIG = 1                   # <linux/prctl.h>
WORKER_STOP_GRACE_SECONDS = 1.0
JOIN_THREAD_END_SECONDS = 2.0          # the thread of `JoinedBatches` ends within ms once woken (shut_down_workers)


def _prepare_worker(parent_pid: int, _worker_id: int) -> None:
    """worker_init_fn. Slurm signals every process of a step: a worker must not die of the SIGTERM/SIGUSR1
    meant for its rank, which stops at the next batch boundary and then ends its workers itself
    (`shut_down_workers`). Ignoring SIGTERM must not make a worker outlive its rank, so the kernel
    SIGKILLs it when the rank dies (PR_SET_PDEATHSIG; torch's own check of the parent runs only between
    chunks, every 5 s)."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:    # the rank died before the line above took effect
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):   # no prctl: torch's parent check still ends an idle worker
        pass


def shut_down_workers(chunks_in_order: Any, grace_seconds: float = WORKER_STOP_GRACE_SECONDS) -> None:
    """End the DataLoader workers behind `chunks_in_order` (an iterator of the loader) now.

    Asks first, torch's way (the "done" event, then None on each worker's queue): an idle worker exits at
    once, a busy one after its chunk. Whatever is still alive after `grace_seconds` is SIGKILLed: the
    workers ignore SIGTERM (Slurm), so `terminate()`, what torch and Python's exit handler use, would not
    end them. Nothing a worker holds is needed any more: the loop is over. A no-op without workers or
    after torch has shut them down itself (the iterator ran out).
    """
    workers = list(getattr(chunks_in_order, "_workers", ()))
    if not workers or getattr(chunks_in_order, "_shutdown", True):
        return
    # These are torch's own shutdown steps (torch.utils.data.dataloader, `_shutdown_workers`) with a
    # short grace and SIGKILL where torch waits 5 s per worker and then sends SIGTERM. Should a torch
    # release rename what they use, the workers are still killed below.
    with contextlib.suppress(Exception):
        from torch.utils.data import _utils as loader_utils

        # torch watches its workers through SIGCHLD and raises in the main thread when one ends by a signal.
        if chunks_in_order._worker_pids_set:
            loader_utils.signal_handling._remove_worker_pids(id(chunks_in_order))
            chunks_in_order._worker_pids_set = False
        chunks_in_order._workers_done_event.set()
        for index_queue in chunks_in_order._index_queues:
            with contextlib.suppress(Exception):   # a queue already closed: that worker is gone
                index_queue.put(None)
        deadline = time.monotonic() + grace_seconds
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    for worker in workers:
        worker.join(5.0)
    with contextlib.suppress(Exception):
        chunks_in_order._shutdown_workers()   # closes torch's queues and threads; its joins return at once
    # A thread still receiving from this iterator (`JoinedBatches`) waits inside torch's loop, which polls
    # the result queue every 5 s for ever once the workers are marked gone; alive at interpreter exit, such a
    # thread can abort the process (SIGABRT instead of the verdict's exit code). An item that is no chunk
    # (index -1) makes torch's bookkeeping raise in that thread at once, and it ends.
    with contextlib.suppress(Exception):
        chunks_in_order._worker_result_queue.put((-1, None))


def kill_preprocessing_workers() -> None:
    """SIGKILL every live child this process started through multiprocessing: the preprocessing workers
    (nothing else here starts any). For the monitor thread, which ends the process with `os._exit` while
    the main thread may be inside the batch loop, and as the last check before a normal exit."""
    try:
        children = multiprocessing.active_children()
    except Exception:   # the main thread is starting workers this instant; PR_SET_PDEATHSIG still ends them
        children = []
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()
            child.join(5.0)


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
    except torch.cuda.OutOfMemoryError as error:
        if len(prepared.indices) == 1:
            item_id = prepare.items[prepared.indices[0]].id
            first_line = (str(error).strip().splitlines() or ["out of memory"])[0]
            raise UserError(f"out of memory generating item {item_id!r} alone (batch size 1): {first_line[:200]}; "
                            "the model and one item do not fit: split the model over more GPUs "
                            "(--gpus-per-model), or use --load-in-8bit, or fewer tiles (--max-num)") from None
    torch.cuda.empty_cache()
    half = len(prepared.indices) // 2
    texts, splits = [], 1
    for part in (prepared.indices[:half], prepared.indices[half:]):
        sub = prepare(prepared.number, part)
        part_texts, part_splits = _generate_splitting_on_oom(adapter, prepare, sub, settings)
        texts += part_texts
        splits += part_splits
    return texts, splits
