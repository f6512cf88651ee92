"""Fail fast: membership, liveness, failure records and interruptible waits on the coordination store.

No rank ever waits for a dead peer. Each rank runs a monitor thread (its own store client) that:

* beats: writes `hb/<rank>` (a counter, the phase and the items in hand) every second;
* watches two ring successors over a plain TCP connection: a process that dies, even by `kill -9`, has
  its sockets closed by the kernel, so its watchers see end-of-file at once. A peer that left cleanly set
  `exit/<rank>` first; one that did not is recorded as dead, with the items it was working on;
* watches the same peers' heartbeats: a frozen process (SIGSTOP) or a lost host keeps its socket open but
  stops beating, and is recorded as stalled after `stall_timeout`; so is a rank stuck in one collective
  for that long (the heartbeat thread keeps beating through long generations, which never trip it);
* sees the first failure record (`failure`, first writer wins by compare-and-set) and then stops this
  process with exit 3 after one short report. The journal is durable at every batch boundary, so ending
  the process from this thread loses at most the batch in hand.

The main thread never blocks in the store: `wait_for` polls, so it too notices failures.
"""
from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time
import traceback as traceback_module
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from launcher.errors import EXIT_PEER_FAILED, PeerFailedError
from launcher.topology import Topology

BEAT_SECONDS = 1.0
WATCHED_SUCCESSORS = 2
FAILURE_KEY = "failure"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class _Peer:
    rank: int
    connection: socket.socket | None = None
    last_beat: Any = None
    last_change: float = field(default_factory=time.monotonic)
    left: bool = False


class Coordinator:
    """This process's view of the run's health; see the module docstring."""

    def __init__(self, store, topology: Topology, stall_timeout: float,
                 on_peer_failure: Callable[[dict], None] | None = None) -> None:
        self.store = store
        self.topology = topology
        self.stall_timeout = stall_timeout
        self.on_peer_failure = on_peer_failure
        self._phase: dict[str, Any] = {"phase": "starting", "items": [], "since": time.time()}
        self._phase_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._accepted: list[socket.socket] = []
        self._failure_seen: dict | None = None
        self.handling_own_failure = False      # set by the main thread: its own error is being reported
        self.tick_callbacks: list[Callable[[Any], None]] = []   # called with the monitor's store

    # ----- phase: what the main thread is doing (for heartbeats and root-cause reports)
    def set_phase(self, phase: str, items: Sequence[str] = ()) -> None:
        with self._phase_lock:
            self._phase = {"phase": phase, "items": list(items)[:64], "since": time.time()}

    def phase(self) -> dict[str, Any]:
        with self._phase_lock:
            return dict(self._phase)

    # ----- lifecycle
    @property
    def distributed(self) -> bool:
        return self.topology.world_size > 1

    def start(self) -> None:
        if not self.distributed:
            return
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("0.0.0.0", 0))
        self._listener.listen(16)
        member = {"host": self.topology.hostname, "address": _own_address(self.topology),
                  "port": self._listener.getsockname()[1], "pid": os.getpid(),
                  "local_rank": self.topology.local_rank}
        self.store.set(f"member/{self.topology.rank}", json.dumps(member))
        monitor_store = self.store.clone() if hasattr(self.store, "clone") else self.store
        self._thread = threading.Thread(target=self._run, args=(monitor_store,), name="launcher-monitor",
                                        daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """Announce a clean exit, then stop watching (peers then read our closed socket as a clean exit)."""
        if not self.distributed:
            return
        try:
            self.store.set(f"exit/{self.topology.rank}", now_iso())
        except Exception:  # the store may already be gone at the very end of a run
            pass
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for connection in self._accepted:
            connection.close()
        if self._listener is not None:
            self._listener.close()

    def leave_without_join(self) -> None:
        """`leave` for the monitor thread itself (it cannot join itself); the process exits right after."""
        if not self.distributed:
            return
        self._stop.set()

    # ----- failure records
    def record_failure(self, kind: str, message: str, rank: int | None = None, items: Sequence[str] = (),
                       traceback: str | None = None, host: str | None = None) -> dict:
        """Record a failure; returns the root cause (the first record, which may be another rank's)."""
        record = {"rank": self.topology.rank if rank is None else rank,
                  "host": host or self.topology.hostname, "time": now_iso(), "kind": kind,
                  "message": message, "items": list(items), "traceback": traceback,
                  "observed_by": self.topology.rank}
        encoded = json.dumps(record)
        try:
            self.store.set(f"failures/{record['rank']}", encoded)
            winner = self.store.compare_set(FAILURE_KEY, "", encoded)
            return json.loads(winner)
        except Exception:
            return record

    def failure(self) -> dict | None:
        """The root-cause failure record, if any rank recorded one."""
        if self._failure_seen is not None:
            return self._failure_seen
        try:
            if self.store.check([FAILURE_KEY]):
                self._failure_seen = json.loads(self.store.get(FAILURE_KEY))
        except Exception:
            return None
        return self._failure_seen

    def per_rank_records(self, prefix: str) -> list[dict]:
        """The JSON values of `<prefix>/<rank>` that exist, in rank order (what was read before the store
        went away, if it did)."""
        records = []
        for rank in range(self.topology.world_size):
            key = f"{prefix}/{rank}"
            try:
                if self.store.check([key]):
                    records.append(json.loads(self.store.get(key)))
            except Exception:
                break
        return records

    def all_failures(self) -> list[dict]:
        return self.per_rank_records("failures")

    # ----- waiting without hanging
    def wait_for(self, keys: Sequence[str], what: str, timeout: float) -> None:
        """Poll until every key exists; raise PeerFailedError on a recorded failure or after `timeout`."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.store.check(list(keys)):
                return
            failure = self.failure()
            if failure is not None:
                raise PeerFailedError(describe_failure(failure))
            if time.monotonic() > deadline:
                raise PeerFailedError(f"rank {self.topology.rank} waited {timeout:.0f} s for {what}; giving up "
                                      "(--timeout)")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    # ----- the monitor thread
    def _run(self, store) -> None:
        rank, world = self.topology.rank, self.topology.world_size
        peers = [_Peer((rank + step) % world) for step in range(1, min(WATCHED_SUCCESSORS, world - 1) + 1)]
        beat = 0
        while not self._stop.is_set():
            try:
                beat += 1
                store.set(f"hb/{rank}", json.dumps({"beat": beat, **self.phase()}))
                self._accept_connections()
                for peer in peers:
                    self._check_peer(store, peer)
                if self._failure_seen is None and store.check([FAILURE_KEY]):
                    self._failure_seen = json.loads(store.get(FAILURE_KEY))
                for callback in self.tick_callbacks:
                    callback(store)
            except Exception as error:  # the store itself is gone: its host (rank 0 or the agent) died
                if self._stop.is_set():
                    return
                self._failure_seen = {"rank": 0, "host": self.topology.master_addr, "kind": "store-lost",
                                      "time": now_iso(), "items": [], "traceback": None,
                                      "message": f"the coordination store at {self.topology.master_addr}:"
                                                 f"{self.topology.master_port} stopped answering ({error}): "
                                                 "the process serving it died",
                                      "observed_by": rank}
            if self._failure_seen is not None and not self._stop.is_set():
                if self.handling_own_failure:
                    return
                if self.on_peer_failure is not None:
                    self.on_peer_failure(self._failure_seen)
                return
            self._stop.wait(BEAT_SECONDS)

    def _accept_connections(self) -> None:
        assert self._listener is not None
        while select.select([self._listener], [], [], 0)[0]:
            connection, _ = self._listener.accept()
            self._accepted.append(connection)

    def _check_peer(self, store, peer: _Peer) -> None:
        if peer.left:
            return
        if peer.connection is None:
            key = f"member/{peer.rank}"
            if store.check([key]):
                member = json.loads(store.get(key))
                try:
                    peer.connection = socket.create_connection((member["address"], member["port"]), timeout=10)
                except OSError:
                    peer.connection = None  # not listening yet or unreachable: heartbeats still cover it
        if peer.connection is not None and select.select([peer.connection], [], [], 0)[0]:
            try:
                data = peer.connection.recv(1)
            except OSError:
                data = b""
            if not data:
                peer.connection.close()
                peer.connection = None
                if store.check([f"exit/{peer.rank}"]):
                    peer.left = True
                    return
                # A failing rank records its own failure before its socket closes; give it a moment.
                time.sleep(0.5)
                if store.check([f"exit/{peer.rank}"]) or store.check([FAILURE_KEY]):
                    peer.left = True
                    return
                last = _last_heartbeat(store, peer.rank)
                self._record_from_monitor(
                    store, peer.rank, "died", f"rank {peer.rank} died without a word (killed by a signal such as "
                    f"SIGKILL, or the OOM killer); it was {last.get('phase', 'starting')}", last)
                return
        key = f"hb/{peer.rank}"
        if store.check([key]):
            beat = store.get(key)
            if beat != peer.last_beat:
                peer.last_beat, peer.last_change = beat, time.monotonic()
                heartbeat = json.loads(beat)
                stuck_for = time.time() - heartbeat.get("since", time.time())
                if heartbeat.get("phase", "").startswith("collective") and stuck_for > self.stall_timeout:
                    self._record_from_monitor(store, peer.rank, "stalled",
                                              f"rank {peer.rank} has been in {heartbeat['phase']} for "
                                              f"{stuck_for:.0f} s (--stall-timeout {self.stall_timeout:.0f})",
                                              heartbeat)
                return
        silent = time.monotonic() - peer.last_change
        if silent > self.stall_timeout and not store.check([f"exit/{peer.rank}"]):
            last = _last_heartbeat(store, peer.rank)
            self._record_from_monitor(store, peer.rank, "stalled",
                                      f"rank {peer.rank} gave no sign of life for {silent:.0f} s (--stall-timeout "
                                      f"{self.stall_timeout:.0f}): frozen, or its host is down", last)

    def _record_from_monitor(self, store, rank: int, kind: str, message: str, heartbeat: dict) -> None:
        host = None
        if store.check([f"member/{rank}"]):
            host = json.loads(store.get(f"member/{rank}")).get("host")
        record = {"rank": rank, "host": host or "?", "time": now_iso(), "kind": kind, "message": message,
                  "items": heartbeat.get("items", []), "traceback": None, "observed_by": self.topology.rank}
        encoded = json.dumps(record)
        store.set(f"failures/{rank}", encoded)
        self._failure_seen = json.loads(store.compare_set(FAILURE_KEY, "", encoded))


def _last_heartbeat(store, rank: int) -> dict:
    key = f"hb/{rank}"
    return json.loads(store.get(key)) if store.check([key]) else {}


def _own_address(topology: Topology) -> str:
    """An address peers can reach: the one this host uses towards the master (works for localhost too)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((topology.master_addr, topology.master_port or 1))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def describe_failure(record: dict) -> str:
    items = record.get("items") or []
    shown = ", ".join(map(str, items[:8])) + (" ..." if len(items) > 8 else "")
    text = (f"rank {record.get('rank')} on {record.get('host')} failed at {record.get('time')} "
            f"({record.get('kind')}): {record.get('message')}")
    if items:
        text += f"; items in hand: {shown}"
    return text


def root_cause_report(root: dict, others: Sequence[dict]) -> str:
    """One report: the first failure observed (with its traceback), then the others."""
    lines = ["=" * 72, "Run failed. Root cause (first failure observed):", "  " + describe_failure(root)]
    if root.get("traceback"):
        lines += ["  " + line for line in root["traceback"].rstrip().splitlines()]
    rest = [record for record in others if record.get("rank") != root.get("rank")]
    if rest:
        lines.append("Other failures:")
        lines += ["  " + describe_failure(record) for record in rest]
    lines.append("=" * 72)
    return "\n".join(lines)


def format_exception(error: BaseException) -> str:
    return "".join(traceback_module.format_exception(type(error), error, error.__traceback__))


def exit_now(code: int = EXIT_PEER_FAILED) -> None:
    """End the process from any thread without running collectives or atexit hooks that could hang."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
