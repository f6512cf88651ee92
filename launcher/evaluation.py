"""One whole run: topology, model, every task (plan, run, merge, score), the manifest and the exit code.

Coordination goes through the store, never through barriers: rank 0 publishes each task's plan (the
attempt number and the ids already journaled), every process runs its batches and says `done`, rank 0
merges and scores. A failure anywhere ends every process quickly (see coordination.py) with one report.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from eval_scripts.base import Item, Task, TaskInputs
from eval_scripts.registry import get_task
from launcher.cli import RunConfig
from launcher.coordination import (Coordinator, describe_failure, exit_now, format_exception, now_iso,
                                   root_cause_report)
from launcher.errors import (EXIT_DONE, EXIT_PEER_FAILED, EXIT_PREEMPTED, EXIT_USER_ERROR, PeerFailedError,
                             PreemptedError, UserError)
from launcher.gather import gather_rows_to_main, merge_rows
from launcher.images import image_size
from launcher.journal import Journal, journal_path, next_attempt, read_journal, read_journals
from launcher.outputs import (archive_manifest, atomic_write_json, atomic_write_jsonl, atomic_write_text,
                              check_fingerprint, checkpoint_identity, git_revision, versions)
from launcher import prefix_sharing
from launcher.preflight import bad_images_error, check_images_everywhere, count_image_files
from launcher.runner import (StopFlag, default_num_workers, ignore_stop_signals, install_signal_handlers,
                             kill_preprocessing_workers, run_batches)
from launcher.scheduler import plan_batches, shard_indices
from launcher.topology import Topology, connect, detect, disconnect

PREEMPT_GRACE_SECONDS = 10.0
CHAT_TEMPLATE_TOKENS = 32        # --batch-size auto: the chat template's tokens beyond the estimated cost
DEAD_PEER_SETTLE_SECONDS = 2.5
FOREVER = float("inf")


class Evaluation:
    """State of one process's run; `run()` returns the process exit code."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.topology: Topology | None = None
        self.store = None
        self.coordinator: Coordinator | None = None
        self.stop = StopFlag()
        self.manifest: dict[str, Any] = {"status": "running", "started": now_iso(),
                                         "arguments": config.to_json(), "tasks": {}}
        self._ending = threading.Lock()
        self._clock_origin = time.perf_counter()   # per-rank timelines count from here
        self._loaded_at: float | None = None
        self._bad_images: dict[str, dict[int, str]] = {}   # task -> item index -> reason (--on-bad-item skip)
        self._free_bytes: int | None = None      # free GPU memory after loading (--batch-size auto)
        self._manifest_archived = False

    # ----- output
    def log(self, message: str, all_ranks: bool = False) -> None:
        rank = self.topology.rank if self.topology else 0
        if rank == 0 or self.config.verbose or all_ranks:
            prefix = "[launcher]" if self.topology is None or self.topology.world_size == 1 else f"[rank {rank}]"
            print(f"{prefix} {message}", file=sys.stderr, flush=True)

    @property
    def out_dir(self) -> Path:
        return self.config.resolved_out_dir

    # ----- the run
    def run(self) -> int:
        try:
            return self._run()
        finally:
            kill_preprocessing_workers()   # none should be left; one that is would hang Python's exit
            ignore_stop_signals()

    def _run(self) -> int:
        try:
            tasks = [get_task(name) for name in self.config.tasks]
            self._setup()
            # Bad data fails here, in seconds, before minutes of model loading.
            self.coordinator.set_phase("loading data")
            inputs = self._task_inputs()
            task_items = [(task, task.load(inputs)) for task in tasks]
            self.coordinator.set_phase("checking image files")
            for task, items in task_items:
                self._check_image_files(task, items)
            adapter = self._load_model()
            for task, items in task_items:
                self._evaluate(task, items, adapter)
            self._finish()
            return EXIT_DONE
        except PreemptedError as stopped:
            return self._end_preempted(str(stopped))
        except PeerFailedError as error:
            return self._end_failed(None, str(error), EXIT_PEER_FAILED)
        except UserError as error:
            return self._end_failed("user-error", str(error), EXIT_USER_ERROR)
        except KeyboardInterrupt:
            return self._end_failed("interrupted", "interrupted (Ctrl-C)", EXIT_PEER_FAILED)
        except Exception as error:  # a bug: report it with its traceback, once
            return self._end_failed("exception", f"{type(error).__name__}: {error}", 1, format_exception(error))

    def _setup(self) -> None:
        config = self.config
        self.topology = detect(config.gpus_per_model, config.auto)
        # A master that cannot be reached is an error within min(--timeout, 300 s), not a hang.
        self.store = connect(self.topology, config.timeout, connect_timeout_s=min(config.timeout, 300.0))
        self.coordinator = Coordinator(self.store, self.topology, config.stall_timeout,
                                       on_peer_failure=self._on_peer_failure)
        self.coordinator.tick_callbacks.append(self._check_preempt_grace)
        install_signal_handlers(self.stop)
        self.coordinator.start()
        self.manifest["topology"] = {"world_size": self.topology.world_size, "launcher": self.topology.launcher,
                                     "job_id": self.topology.job_id}
        if self.topology.world_size > 1:
            self.manifest["topology"]["rendezvous"] = f"{self.topology.master_addr}:{self.topology.master_port}"
        self.log(f"{self.topology.world_size} process(es), launcher {self.topology.launcher}; "
                 f"this process: host {self.topology.hostname}, "
                 f"{'GPUs ' + ','.join(map(str, self.topology.gpus)) if self.topology.gpus else 'CPU'}")

    def _load_model(self):
        import torch

        from launcher.loading import load_adapter

        topology = self.topology
        devices = [torch.device("cuda", gpu) for gpu in topology.gpus] or [torch.device("cpu")]
        self.coordinator.set_phase("loading model")
        started = time.perf_counter()
        adapter = load_adapter(self.config, devices)
        self._loaded_at = time.perf_counter()
        seconds = self._loaded_at - started
        self._setup_speed(adapter, devices)
        description = adapter.describe()
        self.store.set(f"info/{topology.rank}", json.dumps({"topology": topology.to_json(), "model": description,
                                                           "load_seconds": round(seconds, 3)}, default=str))
        self.log(f"model loaded in {seconds:.1f} s: {description.get('adapter')} ({description.get('dtype')})")
        return adapter

    def _check_image_files(self, task: Task, items: Sequence[Item]) -> None:
        """Every image file exists and is a regular file (launcher/preflight.py): stop now under
        --on-bad-item error, else remember the bad items, which `_evaluate` records as skipped."""
        topology = self.topology
        started = time.perf_counter()
        bad = check_images_everywhere(
            task.name, items, topology.rank, topology.world_size, self.store,
            lambda keys, what: self.coordinator.wait_for(keys, what, self.config.timeout))
        checked = count_image_files(items)
        self.log(f"{task.name}: {checked} image file(s) checked in {time.perf_counter() - started:.2f} s, "
                 f"{len(bad)} cannot be read")
        if bad and self.config.on_bad_item == "error":
            raise bad_images_error(task.name, bad, checked)
        self._bad_images[task.name] = {}
        for entry in bad:
            self._bad_images[task.name].setdefault(entry.index, f"image {entry.path}: {entry.reason}")

    def _setup_speed(self, adapter, devices) -> None:
        """Prefix sharing on or off (and why), and the free GPU memory `--batch-size auto` starts from."""
        from launcher import batch_size

        reason = "turned off by --no-prefix-sharing"
        if self.config.prefix_sharing:
            reason = prefix_sharing.unsupported_reason(adapter, self.config.generation(1))
        adapter.prefix_sharing = reason is None
        self.manifest["prefix_sharing"] = {"enabled": reason is None, "reason": reason}
        self.log("prefix sharing: " + ("on (questions about the same image share its vision and prefill work)"
                                       if reason is None else f"off ({reason})"))
        self._free_bytes = batch_size.free_bytes(devices)

    def _task_inputs(self) -> TaskInputs:
        config = self.config
        return TaskInputs(data_root=config.data_root, image_root=config.resolved_image_root, data_file=config.data,
                          metric=config.metric, allow_outside_root=config.allow_outside_root)

    def _evaluate(self, task: Task, items: Sequence[Item], adapter) -> None:
        config, topology, store = self.config, self.topology, self.store
        inputs = self._task_inputs()
        settings = config.generation(task.max_new_tokens)
        task_dir = self.out_dir / task.name
        plan_key = f"plan/{task.name}"
        if topology.rank == 0:
            fingerprint = {"model": checkpoint_identity(config.checkpoint), "task": task.fingerprint(inputs),
                           "generation": settings.to_json(), "model_settings": _model_settings(config, adapter)}
            check_fingerprint(task_dir, fingerprint, config.overwrite)
            finished = read_journals(task_dir)
            attempt = next_attempt(task_dir)
            store.set(plan_key, json.dumps({"attempt": attempt, "finished": sorted(finished),
                                            "free_bytes": self._free_bytes}))
        else:
            self.coordinator.wait_for([plan_key], f"rank 0's plan for {task.name}", config.timeout)
        plan = json.loads(store.get(plan_key))
        attempt, finished_ids = plan["attempt"], set(plan["finished"])
        prompts = [task.prompt(item) for item in items]
        pending = [index for index, item in enumerate(items) if item.id not in finished_ids]
        # Items whose image file is missing (--on-bad-item skip) are recorded by rank 0 at once.
        bad_images = self._bad_images.get(task.name, {})
        skipped_now = [index for index in pending if index in bad_images]
        pending = [index for index in pending if index not in bad_images]
        workers = (config.num_workers if config.num_workers is not None
                   else default_num_workers(topology.local_world_size))
        self.log(f"{task.name}: {len(items)} items, {len(items) - len(pending)} already done, attempt {attempt}, "
                 f"schedule {config.schedule}, {workers} preprocessing worker(s)")
        dynamic = config.schedule == "dynamic" and topology.world_size > 1
        groups = prefix_sharing.group_keys(items, pending) if adapter.prefix_sharing else None
        # Every process (one model replica each, however many GPUs it drives) claims from the queue.
        # Static batches are rank-local: only this rank's shard needs reading (image headers).
        wanted = pending if dynamic else shard_indices(pending, topology.rank, topology.world_size, groups)
        image_costs: dict[int, float] = {}
        costs = item_costs(adapter, items, prompts, wanted, image_costs)
        # Under the dynamic schedule every process must cut the same list: all size it from rank 0's memory.
        choice = self._batch_size(adapter, settings, items, costs,
                                  plan.get("free_bytes") if dynamic else self._free_bytes)
        self.log(f"{task.name}: {choice.describe()}")
        if groups is not None:
            self.log(f"{task.name}: prefix sharing: {prefix_sharing.describe_groups(groups)}")
            costs = prefix_sharing.effective_costs(costs, image_costs, groups, choice.batch_size)
        batches = plan_batches(pending, costs, choice.batch_size, topology.rank, topology.world_size, dynamic,
                               groups=groups)
        progress = _Progress(self, task.name, total=len(items), initial=len(items) - len(pending))
        journal = Journal(journal_path(task_dir, topology.rank, attempt))
        counts_before = dict(adapter.sharing_counts)
        try:
            if skipped_now and topology.rank == 0:
                journal.append([{**task.prediction_row(items[index], ""), "skipped": bad_images[index]}
                                for index in skipped_now])
                progress.advance(len(skipped_now), ())
            result = run_batches(
                task=task, items=items, prompts=prompts, batches=batches, adapter=adapter, settings=settings,
                journal=journal, on_bad_item=config.on_bad_item, num_workers=workers,
                pin_memory=bool(topology.gpus), queue_key=f"queue/{task.name}/{attempt}" if dynamic else None,
                store=store, stop=self.stop,
                on_batch_done=progress.advance, set_phase=self.coordinator.set_phase, groups=groups,
                image_tokens=image_costs)
        except BaseException:
            progress.abandon()   # end the bar's line before the error is printed
            raise
        finally:
            journal.close()
        if topology.rank == 0 and skipped_now:
            result.items_done += len(skipped_now)
            result.skipped += len(skipped_now)
        self.coordinator.set_phase(f"done with {task.name}")
        store.set(f"done/{task.name}/{topology.rank}", json.dumps(
            {"items": result.items_done, "batches": result.batches, "skipped": result.skipped,
             "oom_splits": result.oom_splits, "seconds": round(result.seconds, 3), "host": topology.hostname,
             "batch_size": choice.to_json(),
             "prefix_sharing": {key: adapter.sharing_counts[key] - counts_before[key] for key in counts_before},
             "timeline": self._timeline(result)}))
        if config.no_shared_fs:
            own_rows = _rows_of(journal.path)
            self.coordinator.set_phase("collective: gather predictions")
            gathered = gather_rows_to_main(own_rows, topology.rank, topology.world_size)
            self.coordinator.set_phase(f"done with {task.name}")
        if topology.rank != 0:
            return
        done_keys = [f"done/{task.name}/{rank}" for rank in range(topology.world_size)]
        self.coordinator.wait_for(done_keys, f"every process to finish {task.name}", FOREVER)
        progress.close()
        per_rank = [json.loads(value) for value in store.multi_get(done_keys)] if hasattr(store, "multi_get") \
            else [json.loads(store.get(key)) for key in done_keys]
        row_sets = [read_journals(task_dir)]
        if config.no_shared_fs:
            row_sets += [rows for rows in gathered if rows]
        predictions = merge_rows(items, row_sets)
        atomic_write_jsonl(task_dir / "predictions.jsonl", predictions)
        for filename, text in task.extra_outputs(predictions).items():  # before scoring: kept if it fails
            atomic_write_text(task_dir / filename, text)
        score = task.score(predictions)
        metrics = score.to_json(task.name)
        atomic_write_json(task_dir / "metrics.json", metrics)
        self.manifest["tasks"][task.name] = {
            "n": len(items), "attempt": attempt, "metrics": metrics, "per_rank": per_rank,
            "oom_splits": sum(entry["oom_splits"] for entry in per_rank), "batch_size": choice.to_json(),
            "prefix_groups": prefix_sharing.describe_groups(groups) if groups is not None else None,
            "predictions": str(task_dir / "predictions.jsonl")}
        self._write_manifest("running")
        self.log(f"{task.name}: {score.metric} = {score.score:.2f} ({score.scale}, n={score.n}"
                 f"{f', skipped {score.n_skipped}' if score.n_skipped else ''}) -> {task_dir}")
        extra = {key: value for key, value in score.metrics.items() if key != score.metric}
        if extra:
            self.log(f"{task.name}: " + ", ".join(f"{key} {_fmt(value)}" for key, value in extra.items()))

    def _timeline(self, result) -> dict[str, Any]:
        """Seconds since this rank started: model loaded, first batch done, busy/idle within the task, finish."""
        origin = self._clock_origin

        def since(moment: float) -> float:
            return round(moment - origin, 3)

        finish = result.started_at + result.seconds
        busy = sum(end - start for start, end in result.batch_spans)
        return {"load_s": since(self._loaded_at or origin), "task_start_s": since(result.started_at),
                "first_batch_s": since(result.batch_spans[0][1]) if result.batch_spans else None,
                "busy_s": round(busy, 3), "idle_s": round(result.seconds - busy, 3), "finish_s": since(finish),
                "batches": [[since(start), since(end)] for start, end in result.batch_spans]}

    def _batch_size(self, adapter, settings, items: Sequence[Item], costs: dict, free: int | None):
        """`--batch-size N`, or auto (launcher.batch_size) from `free` and the task's longest prompt."""
        from launcher.batch_size import BatchSizeChoice, auto_batch_size

        config = self.config
        if config.batch_size is not None:
            return BatchSizeChoice(config.batch_size, "flag")
        # estimate_cost counts prompt and image tokens, not the chat template's own (a few dozen at most).
        longest = int(max(costs.values(), default=0.0)) + CHAT_TEMPLATE_TOKENS
        images = max((len(items[index].images) for index in costs), default=1)
        tiles = max(1, images) * (config.max_num + 1 if config.dynamic else 1)
        model_config = getattr(adapter.model, "config", None)
        return auto_batch_size(model_config, int(adapter.dtype.itemsize), free, longest, settings.max_new_tokens, tiles)
    # ----- endings
    def _finish(self) -> None:
        topology = self.topology
        if topology.rank == 0:
            self._write_manifest("done")
            self.log(f"done: results in {self.out_dir}")
            others = [f"exit/{rank}" for rank in range(1, topology.world_size)]
            # Rank 0 may serve the store: leave only after everyone else has (they still use it until then).
            self.coordinator.wait_for(others, "the other processes to leave", self.config.timeout)
        self.coordinator.leave()
        disconnect()

    def _write_manifest(self, status: str, extra: dict | None = None) -> None:
        if not self._manifest_archived:   # the previous run's run.json, before this run first replaces it
            archive_manifest(self.out_dir)
            self._manifest_archived = True
        manifest = dict(self.manifest, status=status, updated=now_iso(), versions=versions(),
                        git_revision=git_revision())
        if self.coordinator is not None:
            manifest["processes"] = self.coordinator.per_rank_records("info")
        if extra:
            manifest.update(extra)
        atomic_write_json(self.out_dir / "run.json", manifest)

    def _claim_reporter(self) -> bool:
        """One process writes run.json and the full report: rank 0 if alive, else the first to notice."""
        if self.store is None or self.topology is None or self.topology.world_size == 1:
            return True
        if self.topology.rank != 0:
            time.sleep(1.0)  # let a live rank 0 claim first
        try:
            mine = str(self.topology.rank).encode()
            return self.store.compare_set("reporter", "", mine) == mine
        except Exception:
            return True  # the store is gone (its host died): everyone writes the same verdict atomically

    def _end_failed(self, kind: str | None, message: str, code: int, traceback: str | None = None) -> int:
        """This process hit an error (kind set) or learned of a peer's (kind None). Returns the exit code."""
        with self._ending:
            coordinator = self.coordinator
            if coordinator is None:
                print(traceback or f"error: {message}", file=sys.stderr, flush=True)
                return code
            coordinator.handling_own_failure = True
            if kind is not None:
                items = coordinator.phase().get("items", [])
                root = coordinator.record_failure(kind, message, items=items, traceback=traceback)
                # Every rank often hits the same bad input: the rank whose record won prints it, once.
                if root.get("observed_by") == self.topology.rank or kind == "exception" or self.config.verbose:
                    print(traceback or f"error: {message}", file=sys.stderr, end="" if traceback else "\n",
                          flush=True)
            else:
                root = coordinator.failure() or {"rank": "?", "host": "?", "kind": "failed", "message": message}
            if root.get("kind") == "user-error":
                code = EXIT_USER_ERROR
            self._report(root)
            self._linger_as_store_server()
            coordinator.leave()
            disconnect()
            return code

    def _linger_as_store_server(self, seconds: float = 5.0) -> None:
        """Rank 0 serves the store under srun and plain python: on a failure, give the live peers a few
        seconds to read the verdict and leave before the store goes away with this process."""
        topology = self.topology
        if topology is None or topology.rank != 0 or topology.agent_store or topology.world_size == 1:
            return
        keys = [f"exit/{rank}" for rank in range(1, topology.world_size)]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if all(self.store.check([key]) or self.store.check([f"failures/{key[5:]}"]) for key in keys):
                    return
            except Exception:
                return
            time.sleep(0.1)

    def _report(self, root: dict) -> None:
        """Write run.json's verdict and print the root-cause report (reporter) or one line (others)."""
        status = "stalled" if root.get("kind") == "stalled" else "failed"
        if self._claim_reporter():
            others = self.coordinator.all_failures() if self.coordinator else []
            report_root = dict(root)
            if root.get("traceback") and root.get("rank") == (self.topology.rank if self.topology else 0):
                report_root["traceback"] = None  # already printed above by this process, once
            if root.get("kind") != "user-error":  # a user error was printed above, as one message
                print(root_cause_report(report_root, others), file=sys.stderr, flush=True)
            try:
                self._write_manifest(status, {"root_cause": root, "failures": others})
            except UserError as error:  # e.g. the disk is full: the report above is all we can leave
                print(f"error: {error}", file=sys.stderr)
        elif root.get("observed_by") != (self.topology.rank if self.topology else None):
            self.log(f"stopping: {describe_failure(root)}", all_ranks=root.get("kind") != "user-error")

    def _on_peer_failure(self, root: dict) -> None:
        """Monitor thread: a peer failed or stalled. End this process now (the journal is durable)."""
        if not self._ending.acquire(blocking=False):
            return
        self.coordinator.handling_own_failure = True
        kill_preprocessing_workers()
        self._report(root)
        self._linger_as_store_server()
        self.coordinator.leave_without_join()
        exit_now(EXIT_USER_ERROR if root.get("kind") == "user-error" else EXIT_PEER_FAILED)

    def _end_preempted(self, reason: str) -> int:
        with self._ending:
            code = self._preempted_verdict(reason)
            disconnect()
            return code

    def _preempted_verdict(self, reason: str) -> int:
        coordinator = self.coordinator
        coordinator.handling_own_failure = True
        coordinator.set_phase("stopping")
        # torchrun and `srun -K` SIGTERM the survivors when a rank dies: that is a failure, not a preemption.
        # The watchers see a dead peer's closed socket within a beat; wait that long before deciding.
        time.sleep(DEAD_PEER_SETTLE_SECONDS)
        root = coordinator.failure()
        if root is not None:
            self._report(root)
            coordinator.leave()
            return EXIT_USER_ERROR if root.get("kind") == "user-error" else EXIT_PEER_FAILED
        self.log(f"{reason}: journals are flushed; rerun the same command to resume", all_ranks=True)
        try:
            self.store.set(f"preempted/{self.topology.rank}", reason)
        except Exception:
            pass
        if self._claim_reporter():
            try:
                self._write_manifest("preempted", {"stopped_by": self.stop.signal_name})
            except UserError as error:
                print(f"error: {error}", file=sys.stderr)
        self._linger_as_store_server()
        coordinator.leave()
        return EXIT_PREEMPTED

    def _check_preempt_grace(self, _store) -> None:
        """Monitor thread: the main thread got SIGTERM/SIGUSR1 but is still inside a long batch."""
        if self.stop.raised_at is None or time.monotonic() - self.stop.raised_at < PREEMPT_GRACE_SECONDS:
            return
        if not self._ending.acquire(blocking=False):
            return
        kill_preprocessing_workers()
        code = self._preempted_verdict(f"stopped by {self.stop.signal_name} (batch in hand abandoned)")
        exit_now(code)


class _Progress:
    """Rank 0's bar counts every process's finished items (a counter on the store), with an ETA."""

    def __init__(self, evaluation: Evaluation, task_name: str, total: int, initial: int) -> None:
        self.evaluation = evaluation
        self.key = f"progress/{task_name}"
        self.initial = initial
        self.bar = None
        self._lock = threading.Lock()
        topology = evaluation.topology
        if topology.rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=task_name, unit="item", dynamic_ncols=True,
                            file=sys.stderr, mininterval=0.5)
            evaluation.coordinator.tick_callbacks.append(self._refresh)

    def advance(self, count: int, _ids: Sequence[str]) -> None:
        total = self.evaluation.store.add(self.key, count)
        if self.bar is not None:
            self._set(self.initial + total)

    def _refresh(self, store) -> None:
        self._set(self.initial + store.add(self.key, 0))

    def _set(self, value: int) -> None:
        with self._lock:
            if self.bar is not None and value > self.bar.n:
                self.bar.update(value - self.bar.n)

    def abandon(self) -> None:
        """Close the bar as it stands (a failure: the store may be gone)."""
        with self._lock:
            if self.bar is not None:
                self.evaluation.coordinator.tick_callbacks.remove(self._refresh)
                self.bar.close()
                self.bar = None

    def close(self) -> None:
        if self.bar is not None:
            self._refresh(self.evaluation.store)
        with self._lock:
            if self.bar is not None:
                self.evaluation.coordinator.tick_callbacks.remove(self._refresh)
                self.bar.close()
                self.bar = None


def item_costs(adapter, items: Sequence[Item], prompts: Sequence[str], indices: Iterable[int],
               image_costs: dict[int, float] | None = None) -> dict[int, float]:
    """Each item's cost (LLM tokens) from its image headers; with `image_costs`, also fills in its image part
    (the cost without the prompt): what prefix sharing pays once per group, and the first batch's
    preprocessing weight (`runner.lead_split`)."""
    costs: dict[int, float] = {}
    headers: dict[Any, Any] = {}      # an image asked about by several items is read once
    for index in indices:
        sizes = [size for size in (_cached_image_size(source, headers) for source in items[index].images) if size]
        costs[index] = float(adapter.estimate_cost(items[index], prompts[index], sizes))
        if image_costs is not None:
            image_costs[index] = float(adapter.estimate_cost(items[index], "", sizes))
    return costs


def _cached_image_size(source: Any, headers: dict[Any, Any]) -> tuple[int, int] | None:
    try:
        if source not in headers:
            headers[source] = image_size(source)
        return headers[source]
    except TypeError:     # an unhashable source
        return image_size(source)


def _rows_of(path: Path) -> dict[str, dict]:
    return {str(row["id"]): row for row in read_journal(path)} if path.exists() else {}


def _model_settings(config: RunConfig, adapter) -> dict:
    description = adapter.describe()
    return {"dtype": str(description.get("dtype")), "load_in_8bit": config.load_in_8bit,
            "load_in_4bit": config.load_in_4bit, "dynamic": config.dynamic, "max_num": config.max_num,
            "few_shot": config.few_shot}


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
