"""The distributed run end to end: real processes (plain python and torchrun, gloo on the CPU)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.runs import (child_env, explain, launch, manifest, metrics, predictions, torchrun,
                        torchrun_command)

TASK = "synthetic_shapes"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from eval_scripts.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("data")
    generate_benchmark(root / "synthetic", n_items=11, seed=1234, split="test")
    return root


def common_args(checkpoint, data_root, out_dir, *extra):
    return ["--checkpoint", checkpoint, "--task", TASK, "--data-root", data_root, "--out-dir", out_dir,
            "--num-workers", "1", *extra]


@pytest.fixture(scope="module")
def single_process_run(native_checkpoint, data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("single")
    result = launch(common_args(native_checkpoint, data_root, out_dir, "--batch-size", "1"))
    assert result.returncode == 0, explain(result)
    return out_dir


def test_one_process_writes_predictions_metrics_and_manifest(single_process_run):
    rows = predictions(single_process_run, TASK)
    assert len(rows) == 11 and len({row["id"] for row in rows}) == 11
    assert all({"id", "prediction", "answer"} <= set(row) for row in rows)
    scored = metrics(single_process_run, TASK)
    assert scored["task"] == TASK and scored["n"] == 11 and scored["scale"] == "percent"
    run = manifest(single_process_run)
    assert run["status"] == "done"
    assert run["tasks"][TASK]["n"] == 11
    assert run["processes"][0]["topology"]["world_size"] == 1
    assert "torch" in run["versions"]


@pytest.mark.parametrize("nproc", [2, 3])
def test_more_processes_predict_exactly_what_one_process_predicts(nproc, native_checkpoint, data_root,
                                                                   single_process_run, tmp_path):
    result = torchrun(nproc, common_args(native_checkpoint, data_root, tmp_path, "--batch-size", "1",
                                         "--schedule", "static"))
    assert result.returncode == 0, explain(result)
    assert predictions(tmp_path, TASK) == predictions(single_process_run, TASK)
    per_rank = manifest(tmp_path)["tasks"][TASK]["per_rank"]
    assert [entry["items"] for entry in per_rank] == ([6, 5] if nproc == 2 else [4, 4, 3])


def test_more_processes_than_items_finish_cleanly(native_checkpoint, tmp_path_factory, tmp_path):
    from eval_scripts.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("two_items")
    generate_benchmark(root / "synthetic", n_items=2, seed=99, split="test")
    result = torchrun(3, common_args(native_checkpoint, root, tmp_path, "--batch-size", "1", "--schedule", "static"))
    assert result.returncode == 0, explain(result)
    assert len(predictions(tmp_path, TASK)) == 2
    assert sorted(entry["items"] for entry in manifest(tmp_path)["tasks"][TASK]["per_rank"]) == [0, 1, 1]


def test_two_torchrun_agents_as_two_nodes_match_one_process(native_checkpoint, data_root, single_process_run,
                                                            tmp_path):
    from tests.runs import free_port

    port = free_port()
    args = common_args(native_checkpoint, data_root, tmp_path, "--batch-size", "1")
    agents = [subprocess.Popen(torchrun_command(1, args, port=port, nnodes=2, node_rank=node), env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    outputs = [agent.communicate(timeout=240) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    assert predictions(tmp_path, TASK) == predictions(single_process_run, TASK)
    hosts = {entry["topology"]["node_rank"] for entry in manifest(tmp_path)["processes"]}
    assert hosts == {0, 1}


def test_a_rerun_resumes_from_the_journals_and_redoes_a_torn_line(native_checkpoint, data_root,
                                                                   single_process_run, tmp_path):
    args = common_args(native_checkpoint, data_root, tmp_path, "--batch-size", "1")
    first = torchrun(2, args)
    assert first.returncode == 0, explain(first)
    shards = sorted((tmp_path / TASK / "shards").iterdir())
    assert [path.name for path in shards] == ["rank00000-attempt0000.jsonl", "rank00001-attempt0000.jsonl"]
    lines = shards[0].read_text().splitlines(keepends=True)
    shards[0].write_text("".join(lines[:-1]) + lines[-1][:10])        # a write cut off mid-line
    (tmp_path / TASK / "predictions.jsonl").unlink()
    second = torchrun(3, args)
    assert second.returncode == 0, explain(second)
    redone = sum(entry["items"] for entry in manifest(tmp_path)["tasks"][TASK]["per_rank"])
    assert redone == 1
    assert predictions(tmp_path, TASK) == predictions(single_process_run, TASK)
    # The first run's run.json is kept, not overwritten: a rerun of some tasks (or one that fails early)
    # would otherwise lose the manifest of the others; the report reads earlier-runs/ too.
    kept = [json.loads(path.read_text()) for path in (tmp_path / "earlier-runs").glob("run-*.json")]
    assert [len(run["tasks"][TASK]["per_rank"]) for run in kept] == [2]
    assert len(manifest(tmp_path)["tasks"][TASK]["per_rank"]) == 3


def test_changed_generation_settings_are_refused_unless_overwrite(native_checkpoint, data_root, tmp_path):
    first = launch(common_args(native_checkpoint, data_root, tmp_path, "--batch-size", "4"))
    assert first.returncode == 0, explain(first)
    changed = launch(common_args(native_checkpoint, data_root, tmp_path, "--max-new-tokens", "3"))
    assert changed.returncode == 2, explain(changed)
    assert "holds a different run" in changed.stderr and "--overwrite" in changed.stderr
    assert "Traceback" not in changed.stderr
    replaced = launch(common_args(native_checkpoint, data_root, tmp_path, "--max-new-tokens", "3", "--overwrite"))
    assert replaced.returncode == 0, explain(replaced)
    assert json.loads((tmp_path / TASK / "fingerprint.json").read_text())["generation"]["max_new_tokens"] == 3


def test_a_bad_jsonl_line_names_file_and_line_and_exits_2(native_checkpoint, data_root, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good_lines = (data_root / "synthetic" / "test.jsonl").read_text().splitlines()
    bad.write_text("\n".join(good_lines[:3] + ["{not json"] + good_lines[3:5]) + "\n")
    result = torchrun(2, common_args(native_checkpoint, data_root, tmp_path / "out", "--data", bad))
    assert result.returncode != 0
    assert f"{bad}:4" in result.stderr, explain(result)
    # torchrun prints its own ChildFailedError traceback; ours must print none.
    assert 'launcher/evaluation.py", line' not in result.stderr, explain(result)
    assert manifest(tmp_path / "out")["status"] == "failed"


def test_an_unknown_task_suggests_the_closest_name(native_checkpoint, data_root, tmp_path):
    result = launch(["--checkpoint", native_checkpoint, "--task", "synthetic_shape", "--data-root", data_root,
                     "--out-dir", tmp_path])
    assert result.returncode == 2
    assert "Did you mean 'synthetic_shapes'?" in result.stderr and "Traceback" not in result.stderr


def test_selftest_prints_one_row_per_process_and_passes(tmp_path):
    result = torchrun(2, ["--selftest", "--out-dir", tmp_path])
    assert result.returncode == 0, explain(result)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "host", "node"]
    assert [line.split()[0] for line in lines[1:3]] == ["0", "1"]
    assert "2 process(es), backend gloo, gather ok" in result.stdout and "all checks passed" in result.stdout
    assert list(tmp_path.iterdir()) == []            # its probe files are cleaned up


def test_selftest_names_an_out_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = torchrun(2, ["--selftest", "--out-dir", blocker / "results"])
    assert result.returncode != 0
    assert "FAILED on ranks [0, 1]" in result.stdout, explain(result)


def test_dry_run_plans_replicas_without_gpus_and_refuses_a_plan_that_does_not_fit(native_checkpoint):
    fits = launch(["--checkpoint", native_checkpoint, "--task", TASK, "--gpus-per-model", "2", "--dry-run",
                   "--assume-gpus", "4", "--gpu-memory-gib", "8"])
    assert fits.returncode == 0, explain(fits)
    assert "replica 0 on GPUs 0-1" in fits.stdout and "replica 1 on GPUs 2-3" in fits.stdout
    tiny = launch(["--checkpoint", native_checkpoint, "--task", TASK, "--gpus-per-model", "2", "--dry-run",
                   "--assume-gpus", "2", "--gpu-memory-gib", "0.5"])
    assert tiny.returncode == 2
    assert "does not fit" in tiny.stderr and "Traceback" not in tiny.stderr


def test_no_shared_fs_gathers_through_the_process_group(native_checkpoint, data_root, single_process_run, tmp_path):
    result = torchrun(2, common_args(native_checkpoint, data_root, tmp_path, "--batch-size", "1", "--no-shared-fs"))
    assert result.returncode == 0, explain(result)
    assert predictions(tmp_path, TASK) == predictions(single_process_run, TASK)


def test_run_json_records_each_ranks_timeline(single_process_run):
    (entry,) = manifest(single_process_run)["tasks"][TASK]["per_rank"]
    timeline = entry["timeline"]
    assert 0 <= timeline["load_s"] <= timeline["task_start_s"] <= timeline["first_batch_s"] <= timeline["finish_s"]
    assert len(timeline["batches"]) == entry["batches"] == 11
    assert timeline["busy_s"] == pytest.approx(sum(end - start for start, end in timeline["batches"]), abs=0.01)


def test_an_unreachable_master_is_a_clear_error_within_the_timeout(native_checkpoint, data_root, tmp_path):
    import time

    from tests.runs import free_port, start_ranks, wait_all

    started = time.monotonic()
    rank_one_alone = start_ranks(2, common_args(native_checkpoint, data_root, tmp_path, "--timeout", "5"),
                                 port=free_port(), ranks=[1])
    (code, err), = wait_all(rank_one_alone, timeout=60)
    assert code == 2, err
    assert "MASTER_ADDR=127.0.0.1" in err and "could not reach" in err
    assert time.monotonic() - started < 40
