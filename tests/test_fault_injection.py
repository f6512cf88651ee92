"""Fault injection with real processes: nothing hangs, nothing is lost, every rerun completes the run.

Each test interrupts a run (kill -9, SIGSTOP, SIGTERM, an error on one item, a full disk, a taken port),
checks how every process ended and what run.json says, then reruns and compares the predictions with an
uninterrupted run. The random tiny model rarely stops before --max-new-tokens, which makes each item slow
enough (about 150 ms) to interrupt mid-run. Batch size 1 keeps predictions bit-identical however the
items are regrouped after a resume.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time

import pytest

from tests.runs import (child_env, explain, launch, manifest, predictions, start_ranks, torchrun,
                        torchrun_command, torchrun_workers, wait_all, wait_for_journal_lines)

TASK = "synthetic_shapes"
N_ITEMS = 90
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from eval_scripts.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("fault_data")
    generate_benchmark(root / "synthetic", n_items=N_ITEMS, seed=777, split="test")
    return root


def run_args(checkpoint, data_root, out_dir, *extra):
    return ["--checkpoint", checkpoint, "--task", TASK, "--data-root", data_root, "--out-dir", out_dir,
            "--num-workers", "0", "--batch-size", "1", "--max-new-tokens", "200", *extra]


@pytest.fixture(scope="module")
def reference(native_checkpoint, data_root, tmp_path_factory):
    """The uninterrupted run every interrupted one must end up equal to."""
    out_dir = tmp_path_factory.mktemp("reference")
    result = launch(run_args(native_checkpoint, data_root, out_dir))
    assert result.returncode == 0, explain(result)
    return predictions(out_dir, TASK)


def journaled_per_attempt(out_dir) -> dict[int, int]:
    counts: dict[int, int] = {}
    for path in (out_dir / TASK / "shards").iterdir():
        attempt = int(path.stem.split("attempt")[1])
        counts[attempt] = counts.get(attempt, 0) + path.read_text().count("\n")
    return counts


def test_kill_9_of_one_rank_stops_every_rank_fast_and_a_rerun_completes(native_checkpoint, data_root,
                                                                         reference, tmp_path):
    processes = start_ranks(3, run_args(native_checkpoint, data_root, tmp_path))
    wait_for_journal_lines(tmp_path / TASK, rank=1, lines=2, timeout=120)
    killed_at = time.monotonic()
    processes[1].kill()
    results = wait_all(processes, timeout=90)
    everyone_exited = time.monotonic() - killed_at
    print(f"\nkill -9 of rank 1 -> every process exited in {everyone_exited:.1f} s")
    assert everyone_exited < 60
    assert [code for code, _ in results] == [3, -signal.SIGKILL, 3], results
    run = manifest(tmp_path)
    assert run["status"] == "failed"
    assert run["root_cause"]["rank"] == 1 and run["root_cause"]["kind"] == "died"
    assert "rank 1" in results[0][1] and "died" in results[0][1]

    rerun = torchrun(2, run_args(native_checkpoint, data_root, tmp_path))
    assert rerun.returncode == 0, explain(rerun)
    assert predictions(tmp_path, TASK) == reference
    counts = journaled_per_attempt(tmp_path)
    assert sum(counts.values()) == N_ITEMS                          # nothing lost, nothing twice
    assert manifest(tmp_path)["status"] == "done"


def test_kill_9_under_torchrun_is_a_failure_not_a_preemption(native_checkpoint, data_root, reference, tmp_path):
    agent = subprocess.Popen(torchrun_command(3, run_args(native_checkpoint, data_root, tmp_path)),
                             env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_journal_lines(tmp_path / TASK, rank=2, lines=2, timeout=120)
    workers = torchrun_workers(agent.pid)
    killed_at = time.monotonic()
    os.kill(workers[2], signal.SIGKILL)
    _, err = agent.communicate(timeout=90)
    print(f"\nkill -9 of rank 2 under torchrun -> torchrun exited in {time.monotonic() - killed_at:.1f} s")
    assert agent.returncode != 0
    run = manifest(tmp_path)
    assert run["status"] == "failed", err[-3000:]
    assert run["root_cause"]["rank"] == 2
    rerun = launch(run_args(native_checkpoint, data_root, tmp_path))
    assert rerun.returncode == 0, explain(rerun)
    assert predictions(tmp_path, TASK) == reference


def test_a_frozen_rank_is_named_and_every_other_rank_exits(native_checkpoint, data_root, tmp_path):
    processes = start_ranks(3, run_args(native_checkpoint, data_root, tmp_path, "--stall-timeout", "8"))
    wait_for_journal_lines(tmp_path / TASK, rank=2, lines=2, timeout=120)
    frozen_at = time.monotonic()
    processes[2].send_signal(signal.SIGSTOP)
    try:
        results = wait_all(processes[:2], timeout=60)
        print(f"\nSIGSTOP of rank 2 (--stall-timeout 8) -> ranks 0 and 1 exited in "
              f"{time.monotonic() - frozen_at:.1f} s")
    finally:
        processes[2].kill()
        processes[2].communicate()
    assert [code for code, _ in results] == [3, 3], results
    run = manifest(tmp_path)
    assert run["status"] == "stalled"
    assert run["root_cause"]["rank"] == 2 and run["root_cause"]["kind"] == "stalled"


def test_sigterm_to_every_rank_flushes_exits_75_and_resumes(native_checkpoint, data_root, reference, tmp_path):
    processes = start_ranks(2, run_args(native_checkpoint, data_root, tmp_path))
    wait_for_journal_lines(tmp_path / TASK, rank=0, lines=2, timeout=120)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    results = wait_all(processes, timeout=60)
    assert [code for code, _ in results] == [75, 75], results
    assert manifest(tmp_path)["status"] == "preempted"
    done_before = sum(journaled_per_attempt(tmp_path).values())
    assert 0 < done_before < N_ITEMS

    rerun = torchrun(3, run_args(native_checkpoint, data_root, tmp_path, "--schedule", "static"))
    assert rerun.returncode == 0, explain(rerun)
    assert predictions(tmp_path, TASK) == reference
    assert sum(journaled_per_attempt(tmp_path).values()) == N_ITEMS


def test_a_corrupt_image_stops_the_run_then_skip_records_it(native_checkpoint, data_root, tmp_path):
    lines = (data_root / "synthetic" / "test.jsonl").read_text().splitlines()
    broken = json.loads(lines[5])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    broken["image"] = str(corrupt)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines[:5] + [json.dumps(broken)] + lines[6:12]) + "\n")
    # The file exists, so the check before loading passes it; decoding it (when its batch is prepared) fails.
    args = run_args(native_checkpoint, data_root, tmp_path / "out", "--data", data, "--allow-outside-root",
                    "--max-new-tokens", "4")
    failed = torchrun(2, args)
    assert failed.returncode != 0
    assert f"item '{broken['question_id']}'" in failed.stderr and "corrupt.png" in failed.stderr, explain(failed)
    assert manifest(tmp_path / "out")["status"] == "failed"

    skipped = torchrun(2, args + ["--on-bad-item", "skip"])
    assert skipped.returncode == 0, explain(skipped)
    rows = predictions(tmp_path / "out", TASK)
    assert len(rows) == 12
    assert [row["id"] for row in rows if "skipped" in row] == [str(broken["question_id"])]
    scored = json.loads((tmp_path / "out" / TASK / "metrics.json").read_text())
    assert scored["n_skipped"] == 1 and scored["n"] == 12


def test_a_full_disk_is_a_clear_error_and_the_journal_stays_usable(native_checkpoint, data_root, reference,
                                                                   tmp_path):
    # RLIMIT_FSIZE makes writes past 3 kB fail with EFBIG, as a full disk fails them with ENOSPC.
    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    full = subprocess.run([*launch_command(run_args(native_checkpoint, data_root, tmp_path))], env=child_env(),
                          capture_output=True, text=True, timeout=240, preexec_fn=small_disk)
    assert full.returncode == 2, explain(full)
    assert "cannot write the journal" in full.stderr and "rerun the same command" in full.stderr
    rerun = launch(run_args(native_checkpoint, data_root, tmp_path))
    assert rerun.returncode == 0, explain(rerun)
    assert predictions(tmp_path, TASK) == reference


def test_a_master_port_already_taken_is_a_user_error_naming_it(native_checkpoint, data_root, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        processes = start_ranks(1, run_args(native_checkpoint, data_root, tmp_path), port=port)
        processes[0].args  # noqa: B018 (keeps the process referenced while the port is held)
        (code, err), = wait_all(processes, timeout=60)
    assert code == 2, err
    assert f"MASTER_PORT={port}" in err and "already taken" in err


def launch_command(args):
    import sys

    from tests.runs import LAUNCH

    return [sys.executable, LAUNCH, *map(str, args)]
