"""`python -m launcher sweep`: checkpoints x tasks as one resumable job on this machine (and its job-array script).

The end-to-end tests share one real sweep (conftest.py `interrupted_sweep`, built in tests/sweeps.py): the demo
checkpoint saved as checkpoint-1000/2000/3000 plus a random tiny InternVL, over synthetic_shapes and a small
POPE, two runs side by side on the CPU, stopped by SIGTERM once its third run is under way, then run again
(one run at a time, each under torchrun with two processes). Pure parts (checkpoint lists, names, GPU groups, #SBATCH lines, the script) are table tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import UserError
from launcher.journal import read_journal
from launcher.sweep import (Checkpoint, CheckpointPlan, SweepConfig, checkpoint_names, collect_checkpoints,
                            parse_sweep_args, sbatch_option_lines)
from launcher.sweep_local import plan_layout
from launcher.sweep_slurm import array_script
from launcher.sweep_state import PENDING, PairState, RunOutcome, expected_fingerprint, fingerprint_differences
from tests.runs import ROOT, child_env, explain
from tests.sweeps import (TASKS, journal_lines, kill_tree, pid_alive, process_children, snapshot, sweep_command,
                          wait_until)

# The first test to use the shared sweep builds it (about a minute alone on 2 cores, five on a busy machine).
SWEEP_TIMEOUT = pytest.mark.timeout(900)

# ------------------------------------------------------------------------------------------------ pure parts


def test_checkpoints_come_from_folders_globs_and_list_files_in_step_order(tmp_path):
    for name in ("checkpoint-200", "checkpoint-1000", "checkpoint-30", "other"):
        (tmp_path / "run" / name).mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-5.txt").write_text("not a folder")
    found = collect_checkpoints([str(tmp_path / "run" / "checkpoint-*")])
    assert [path.name for path in found] == ["checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    listing = tmp_path / "models.txt"
    listing.write_text(f"# candidates\n{tmp_path / 'run' / 'other'}\n\n{tmp_path / 'run' / 'checkpoint-2*'}\n")
    found = collect_checkpoints([str(listing), str(tmp_path / "run" / "checkpoint-200")])  # given twice: once
    assert [path.name for path in found] == ["other", "checkpoint-200"]
    with pytest.raises(UserError, match="matches no folder"):
        collect_checkpoints([str(tmp_path / "run" / "step_*")])
    with pytest.raises(UserError, match="is not a folder, a glob or a file"):
        collect_checkpoints([str(tmp_path / "missing")])


def test_names_take_parent_folders_only_where_two_checkpoints_clash():
    paths = [Path("/x/runA/checkpoint-100"), Path("/x/runB/checkpoint-100"), Path("/x/runA/checkpoint-200")]
    assert checkpoint_names(paths) == ["runA-checkpoint-100", "runB-checkpoint-100", "checkpoint-200"]
    assert checkpoint_names([Path("/m/InternVL3-8B"), Path("/n/InternVL3-2B")]) == ["InternVL3-8B", "InternVL3-2B"]


@pytest.mark.parametrize("visible, gpus_per_run, parallel, processes, per_model, auto, slots, expected_processes", [
    ([], None, None, None, 1, False, [None], 1),                                  # CPU: one run at a time
    ([], None, 2, None, 1, False, [None, None], 1),                               # CPU, two side by side
    (list("01234567"), None, None, None, 1, False, [tuple("01234567")], 8),       # one run over all 8 GPUs
    (list("01234567"), 2, None, None, 1, False, [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")], 2),
    (list("01234567"), 4, None, None, 2, False, [("0", "1", "2", "3"), ("4", "5", "6", "7")], 2),
    (list("01234567"), 4, 1, None, 1, False, [("0", "1", "2", "3")], 4),
    (["GPU-a", "GPU-b", "GPU-c"], 1, None, None, 1, False, [("GPU-a",), ("GPU-b",), ("GPU-c",)], 1),
    (list("0123"), 4, None, None, 1, True, [("0", "1", "2", "3")], 1),          # --auto: one process, all GPUs
])
def test_visible_gpus_make_groups_of_gpus_per_run(visible, gpus_per_run, parallel, processes, per_model, auto, slots,
                                                 expected_processes):
    layout = plan_layout(visible, gpus_per_run, parallel, processes, per_model, auto)
    assert list(layout.slots) == slots and layout.processes_per_run == expected_processes


@pytest.mark.parametrize("visible, gpus_per_run, parallel, per_model, message", [
    ([], 1, None, 1, "shows no GPU"),
    (list("0123"), 8, None, 1, "needs 8 GPUs; this machine shows 4"),
    (list("0123"), 2, 3, 1, "make only 2 group"),
    (list("012345"), 3, None, 2, "does not divide the 3 GPUs"),
])
def test_gpu_layouts_that_do_not_fit_name_the_flag(visible, gpus_per_run, parallel, per_model, message):
    with pytest.raises(UserError, match=message):
        plan_layout(visible, gpus_per_run, parallel, None, per_model, False)


@pytest.mark.parametrize("options, lines", [
    ("--nodes=2 --time=04:00:00", ["#SBATCH --nodes=2", "#SBATCH --time=04:00:00"]),
    ("gpus-per-task=1", ["#SBATCH --gpus-per-task=1"]),
    ("-N 2 --partition gpu", ["#SBATCH -N 2", "#SBATCH --partition gpu"]),
    ("--comment='two words'", ["#SBATCH --comment=two words"]),
])
def test_sbatch_options_become_one_line_each(options, lines):
    assert sbatch_option_lines(options) == lines


def _fake_plans(tmp_path: Path, names) -> list[CheckpointPlan]:
    plans = []
    for name in names:
        (tmp_path / "models" / name).mkdir(parents=True, exist_ok=True)
        plans.append(CheckpointPlan(Checkpoint(name, tmp_path / "models" / name),
                                    tuple(PairState(task, PENDING) for task in TASKS), RunOutcome()))
    return plans


def test_the_job_array_script_has_one_array_task_per_checkpoint_and_the_users_lines_last(tmp_path):
    template = tmp_path / "mine.sbatch"
    template.write_text("#!/bin/bash\n#SBATCH --partition=gpu\n#SBATCH --array=0-99\nsrun hostname\n")
    plans = _fake_plans(tmp_path, ["checkpoint-100", "with space"])
    config = SweepConfig(checkpoints=tuple(plan.checkpoint for plan in plans), tasks=TASKS,
                         out_dir=tmp_path / "out", launch_args=("--data-root", "my data", "--batch-size", "4"),
                         slurm=True, parallel_runs=2, sbatch_template=template,
                         sbatch_lines=("#SBATCH --time=01:00:00", "#SBATCH --job-name=mine"))
    text, dropped = array_script(config, plans, tmp_path / "out" / "slurm", tmp_path)
    assert dropped == ["#SBATCH --array=0-99"]
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch.index("#SBATCH --array=0-1%2") < sbatch.index("#SBATCH --partition=gpu") \
        < sbatch.index("#SBATCH --time=01:00:00")
    assert sbatch.index("#SBATCH --job-name=sweep-out") < sbatch.index("#SBATCH --job-name=mine")  # the user wins
    assert "srun hostname" not in text
    script = tmp_path / "array.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    # The lists, read back by bash itself: quoting survives spaces.
    probe = subprocess.run(["bash", "-c", text.split("set -uo pipefail")[0] + '\nprintf "%s\\n" "${CHECKPOINTS[1]}" '
                            '"${TASK_LISTS[0]}" "${LAUNCH_ARGS[1]}" "${#CHECKPOINTS[@]}"'],
                           capture_output=True, text=True)
    assert probe.stdout.splitlines() == [str(tmp_path / "models" / "with space"), "synthetic_shapes,pope", "my data",
                                         "2"]
    outside = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert outside.returncode == 2 and "not an array task" in outside.stderr


def test_sweep_flags_that_cannot_work_are_one_line_errors(tmp_path, capsys):
    from launcher.sweep import main

    (tmp_path / "ckpt").mkdir()
    base = ["--checkpoints", str(tmp_path / "ckpt"), "--task", "synthetic_shapes", "--out-dir", str(tmp_path / "o")]
    cases = [
        (["--checkpoint", "x"], "use the sweep's --checkpoints"),
        (["--dry-run"], "not for a sweep"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--sbatch", "--time=5"], "only make sense with --slurm"),
        (["--parallel-runs", "0"], "--parallel-runs must be at least 1"),
        (["--slurm", "--gpus-per-run", "2"], "with --slurm the #SBATCH lines"),
        (["--slurm", "--sbatch-template", str(tmp_path / "none.sbatch")], "no such file"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    assert main(["--checkpoints", str(tmp_path / "ckpt"), "--task", "textvqa_vall"]) == 2
    assert "Did you mean 'textvqa_val'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end

def _ids(task_dir: Path) -> dict[int, list[str]]:
    """Item ids per attempt, from the journals."""
    found: dict[int, list[str]] = {}
    for path in sorted((task_dir / "shards").glob("*.jsonl")):
        attempt = int(path.stem.split("attempt")[1])
        found.setdefault(attempt, []).extend(str(row["id"]) for row in read_journal(path))
    return found


def _started(output: str, name: str) -> bool:
    """Whether the sweep's output says it started a run of `name`."""
    return any(line.startswith(f"[sweep] {name}: ") and " on CPU (log: " in line for line in output.splitlines())


@SWEEP_TIMEOUT
def test_a_stopped_sweep_exits_75_and_says_what_did_not_finish(interrupted_sweep):
    first = interrupted_sweep.first
    assert first.returncode == 75, first.stdout[-4000:]
    done = {name for name in interrupted_sweep.names
            if all(interrupted_sweep.before[(name, task)].metrics_mtime_ns for task in TASKS)}
    third = interrupted_sweep.names[2]
    assert done and third not in done, "the stop must land after one checkpoint finished, inside the third run"
    manifest = interrupted_sweep.manifests_before[third]
    assert manifest["status"] == "preempted" and manifest["stopped_by"] == "SIGTERM"
    assert f"{third}: preempted: stopped by SIGTERM" in first.stdout
    assert "rerun the same command to resume" in first.stdout
    after_signal = first.stdout.split("[sweep] SIGTERM: stopping", 1)[1]
    assert not any(_started(after_signal, name) for name in interrupted_sweep.names)  # nothing new starts


@SWEEP_TIMEOUT
def test_one_sweep_at_a_time_per_out_dir(interrupted_sweep):
    concurrent = interrupted_sweep.concurrent
    assert concurrent.returncode == 2 and "another sweep is running with --out-dir" in concurrent.stdout, \
        concurrent.stdout[-3000:]
    assert "[sweep]" not in concurrent.stdout


@SWEEP_TIMEOUT
def test_status_after_the_stop_shows_each_pair_and_the_cause(interrupted_sweep):
    status = interrupted_sweep.status
    assert status.returncode == 0, status.stdout[-3000:]
    third = interrupted_sweep.names[2]
    row = next(line for line in status.stdout.splitlines() if line.startswith(third + " "))
    assert "partial (" in row and row.rstrip().endswith("preempted")
    assert f"  {third}: preempted: stopped by SIGTERM; journals flushed" in status.stdout
    first = interrupted_sweep.names[0] if interrupted_sweep.before[(interrupted_sweep.names[0], TASKS[1])] \
        .metrics_mtime_ns else interrupted_sweep.names[1]
    row = next(line for line in status.stdout.splitlines() if line.startswith(first + " "))
    assert row.split()[1:] == ["done", f"{_score(interrupted_sweep.out_dir / first, TASKS[0]):.2f}", "done",
                               f"{_score(interrupted_sweep.out_dir / first, TASKS[1]):.2f}", "done"]


def _score(run_dir: Path, task: str) -> float:
    return json.loads((run_dir / task / "metrics.json").read_text())["score"]


@SWEEP_TIMEOUT
def test_the_rerun_skips_finished_pairs_without_touching_them(interrupted_sweep):
    second, out_dir = interrupted_sweep.second, interrupted_sweep.out_dir
    assert second.returncode == 0, second.stdout[-4000:]
    finished = [pair for pair, state in interrupted_sweep.before.items() if state.metrics_mtime_ns]
    assert finished
    for name, task in finished:   # not rescored, not rewritten, no new attempt
        assert snapshot(out_dir / name / task) == interrupted_sweep.before[(name, task)], (name, task)
    for name in interrupted_sweep.names:
        if all((name, task) in finished for task in TASKS):
            assert not _started(second.stdout, name), f"{name} was done: it must not be started again"
            assert (out_dir / name / "run.json").stat().st_mtime_ns == interrupted_sweep.run_json_before[name]
        else:
            assert _started(second.stdout, name)
            topology = json.loads((out_dir / name / "run.json").read_text())["topology"]
            assert (topology["world_size"], topology["launcher"]) == (2, "torchrun")   # --processes-per-run 2
    for name in interrupted_sweep.names:
        for task in TASKS:
            assert (out_dir / name / task / "metrics.json").is_file(), (name, task)
    assert "8 of 8 pairs done" in second.stdout


@SWEEP_TIMEOUT
def test_the_rerun_resumes_partial_pairs_from_their_journals(interrupted_sweep):
    out_dir = interrupted_sweep.out_dir
    unfinished = [pair for pair, state in interrupted_sweep.before.items()
                  if state.journals and not state.metrics_mtime_ns]
    resumed = 0
    for name, task in unfinished:
        task_dir = out_dir / name / task
        ids = _ids(task_dir)
        earlier = ids.pop(0)
        later = [item for attempt in ids.values() for item in attempt]
        assert not set(earlier) & set(later), f"{name}/{task}: journaled items are never predicted again"
        predicted = [json.loads(line)["id"] for line in (task_dir / "predictions.jsonl").read_text().splitlines()]
        assert sorted(earlier + later) == sorted(predicted) and len(set(predicted)) == len(predicted)
        resumed += bool(earlier)
        if name == interrupted_sweep.names[2] and task == TASKS[0]:
            assert len(earlier) >= 3
        # The stopped run's manifest was kept before the resumed run replaced it (the report reads it).
        kept = [json.loads(path.read_text()) for path in (out_dir / name / "earlier-runs").glob("run-*.json")]
        assert [manifest["status"] for manifest in kept] == ["preempted"]
    assert resumed, "the stop must leave at least one pair half done"


@SWEEP_TIMEOUT
def test_the_sweep_predicts_what_it_would_fingerprint(interrupted_sweep):
    """The sweep's view of 'done' is the fingerprint launch.py wrote, computed without loading a model."""
    config = parse_sweep_args(list(interrupted_sweep.command[4:]))
    for checkpoint in config.checkpoints:
        run_config = config.run_config(checkpoint)
        for task in TASKS:
            stored = json.loads((config.run_dir(checkpoint) / task / "fingerprint.json").read_text())
            expected = json.loads(json.dumps(expected_fingerprint(run_config, task)))
            assert {key: stored[key] for key in expected} == expected
            assert fingerprint_differences(stored, run_config, task) == []
    changed = parse_sweep_args(list(interrupted_sweep.command[4:]) + ["--max-new-tokens", "5", "--dynamic"])
    stored = json.loads((changed.run_dir(changed.checkpoints[0]) / TASKS[0] / "fingerprint.json").read_text())
    assert fingerprint_differences(stored, changed.run_config(changed.checkpoints[0]), TASKS[0]) == [
        "generation", "model_settings.dynamic"]


@SWEEP_TIMEOUT
def test_a_changed_setting_is_refused_unless_overwrite(interrupted_sweep):
    command = list(interrupted_sweep.command)
    env = child_env()
    refused = subprocess.run(command + ["--max-new-tokens", "5"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2, explain(refused)
    assert "holds a run with other settings (changed: generation)" in refused.stderr
    assert "pass --overwrite" in refused.stderr and "[sweep]" not in refused.stdout   # nothing started
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to run: every pair is done" in again.stdout, explain(again)
    # With --overwrite every checkpoint is planned again and launch.py gets the flag (written, not submitted).
    written = subprocess.run(command + ["--max-new-tokens", "5", "--overwrite", "--slurm", "--no-submit"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, explain(written)
    script = Path(written.stdout.split("wrote ")[1].split()[0])
    text = script.read_text()
    assert "#SBATCH --array=0-3%2" in text and "--max-new-tokens 5 --overwrite)" in text
    script.unlink()


def test_a_run_never_outlives_its_sweep(sweep_checkpoints, sweep_data_root, tmp_path):
    """kill -9 of the sweep: the kernel sends its run SIGTERM (PR_SET_PDEATHSIG), so the run ends instead of
    going on unsupervised beside the next sweep. No preprocessing workers here."""
    out_dir = tmp_path / "results"
    command = sweep_command(sweep_checkpoints[:1], sweep_data_root, out_dir, "--num-workers", "0")
    sweep = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = None
    try:
        wait_until(lambda: bool(process_children(sweep.pid)), 120, "the sweep to start its run", sweep)
        run = process_children(sweep.pid)[0]
        sweep.kill()
        sweep.wait()
        wait_until(lambda: not pid_alive(run), 60, "the run to end after its sweep was killed")
    finally:
        kill_tree(sweep.pid)
        if run is not None and pid_alive(run):
            kill_tree(run)
    manifest = out_dir / sweep_checkpoints[0].name / "run.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["status"] == "preempted"
    assert not (out_dir / sweep_checkpoints[0].name / TASKS[1] / "metrics.json").exists()
