"""The repository's own job scripts on a real Slurm cluster: a controller and two slurmd nodes on this machine.

Start the cluster first (CI does, as root): ``slurm/local-cluster.sh start`` installs Debian's Slurm when
missing and prints the SLURM_CONF to export; these tests also find ``slurm/.cluster/slurm.conf`` alone.
Where Slurm is missing or the cluster is down, the whole module is skipped with the reason (shown by
pytest -ra); with REQUIRE_SLURM_TESTS=1 (set by .ci/run once the cluster is up) that is an error instead.

Every job runs the tiny model on the CPU with two nodes and two processes per node, and its predictions
must equal a single `python launch.py` run's. Preemption tests stop a job mid-run with the signals Slurm
uses (docs/SLURM_SIGNALS.md) and check that the job script requeues it, the next run resumes from the
journals, and every item is predicted exactly once across attempts.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faulty_model import bad_item_data, fault_data_root
from tests.runs import (EXIT_CHECK_DIR, LAUNCH, PROCESS_GROUP_LEAK_WARNING, ROOT, RunWatch, child_env, explain, launch,
                        manifest, predictions)

TASK = "synthetic_shapes"
ITEMS = 160                     # enough that a signal lands mid-run (4 processes make about 15 items/s here)
GENERATION = ["--max-new-tokens", "16", "--batch-size", "1"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}
JOB_TIMEOUT_S = 240


def _slurm_conf() -> Path | None:
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    cluster_dir = Path(os.environ.get("SLURM_CLUSTER_DIR", ROOT / "slurm" / ".cluster"))
    conf = cluster_dir / "slurm.conf"
    return conf if conf.is_file() else None


def _why_no_cluster() -> str | None:
    """None when a two-node cluster answers; else the reason, naming the command that fixes it."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return ("Slurm is not installed (no sbatch/scontrol on PATH): run `slurm/local-cluster.sh start` as root; "
                "it installs Debian's slurmctld, slurmd, slurm-client and munge and starts two nodes")
    conf = _slurm_conf()
    if conf is None:
        return ("the local Slurm cluster was never started: run `slurm/local-cluster.sh start` "
                "(or export SLURM_CONF)")
    if not conf.is_file():
        return (f"SLURM_CONF={conf} does not exist: run `slurm/local-cluster.sh start` and export the SLURM_CONF "
                "it prints")
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:  # `scontrol ping` fails at once when the controller is down; sinfo would retry for 10 s
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20, env=env)
        probe = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %t"], capture_output=True, text=True,
                               timeout=20, env=env) if ping.returncode == 0 else ping
    except subprocess.TimeoutExpired:
        return f"the Slurm controller of {conf} did not answer within 20 s: run `slurm/local-cluster.sh start`"
    if probe.returncode != 0:
        said = probe.stdout.strip().splitlines()[:1] or probe.stderr.strip().splitlines()[-1:] or ["no output"]
        detail = said[0]
        return f"the Slurm controller of {conf} does not answer ({detail}): run `slurm/local-cluster.sh start`"
    usable = [line for line in probe.stdout.splitlines() if line.split()[-1] in {"idle", "mix", "alloc"}]
    if len(usable) < 2:
        return (f"the local cluster needs two usable nodes, sinfo shows {probe.stdout.strip()!r}: "
                "run `slurm/local-cluster.sh start`")
    return None


_NO_CLUSTER = _why_no_cluster()
if _NO_CLUSTER is not None:
    if os.environ.get("REQUIRE_SLURM_TESTS") == "1":
        raise RuntimeError(f"REQUIRE_SLURM_TESTS=1 but {_NO_CLUSTER}")
    pytest.skip(_NO_CLUSTER, allow_module_level=True)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment of every Slurm command here: the cluster's config, one thread per process."""
    env = child_env(SLURM_CONF=str(_slurm_conf()))
    for key in [key for key in env if key.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        if key != "SLURM_CONF":
            env.pop(key)
    return env


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return fault_data_root(tmp_path_factory.mktemp("slurm_data"), ITEMS, seed=1234)


@pytest.fixture(scope="module")
def reference_predictions(native_checkpoint, data_root, tmp_path_factory) -> list[dict]:
    """What one plain `python launch.py` process predicts: every Slurm run must match it."""
    out_dir = tmp_path_factory.mktemp("slurm_reference")
    result = launch(["--checkpoint", native_checkpoint, "--task", TASK, "--data-root", data_root, "--out-dir",
                     out_dir, "--num-workers", "0", *GENERATION], timeout=300)
    assert result.returncode == 0, explain(result)
    return predictions(out_dir, TASK)


def submit(script: str, sbatch_options: list[str], env: dict[str, str], log: Path, **variables) -> str:
    """`sbatch` one of the repository's job scripts; `variables` fill its "Edit here" block."""
    job_env = dict(env, **{name: str(value) for name, value in variables.items()})
    result = subprocess.run(["sbatch", "--parsable", f"--output={log}", *sbatch_options, str(ROOT / "slurm" / script)],
                            capture_output=True, text=True, env=job_env, cwd=ROOT, timeout=60)
    assert result.returncode == 0, f"sbatch failed: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def job_info(job_id: str, env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True,
                            env=env, timeout=30)
    fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)
    return fields


def wait_for_job(job_id: str, env: dict[str, str], log: Path, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, str]:
    """Poll until the job is over for good (a requeue passes through PENDING and RUNNING again)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_info(job_id, env)
        if info.get("JobState") in FINAL_STATES:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    pytest.fail(f"job {job_id} still not finished after {timeout_s} s\n{read_log(log)}")


def read_log(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no job output)"
    # Keep the job script's own lines and the end; tqdm and torch warnings are noise here.
    lines = [line for line in text.splitlines() if "Loading weights" not in line and "item/s]" not in line]
    return "--- job output (filtered)\n" + "\n".join(lines[-120:])


def journal_ids(out_dir: Path) -> dict[int, list[str]]:
    """Item ids in the journals, per attempt (a torn last line is skipped, as the launcher does)."""
    ids: dict[int, list[str]] = {}
    for path in sorted((out_dir / TASK / "shards").glob("rank*-attempt*.jsonl")):
        attempt = int(path.stem.split("attempt")[1])
        for line in path.read_text().splitlines():
            try:
                ids.setdefault(attempt, []).append(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):
                continue
    return ids


def wait_for_journal_lines(out_dir: Path, at_least: int, job_id: str, env, log: Path, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = sum(len(rows) for rows in journal_ids(out_dir).values())
        if done >= at_least:
            return done
        if job_info(job_id, env).get("JobState") in FINAL_STATES:
            pytest.fail(f"job {job_id} ended before journaling {at_least} items\n{read_log(log)}")
        time.sleep(0.1)
    pytest.fail(f"job {job_id} journaled fewer than {at_least} items in {timeout_s} s\n{read_log(log)}")


def job_variables(checkpoint, data_root, out_dir, **extra) -> dict:
    """The "Edit here" block of the job scripts, for the tiny model on the CPU."""
    return dict(CHECKPOINT=checkpoint, TASKS=TASK, DATA_ROOT=data_root, OUT_DIR=out_dir, BATCH_SIZE=1,
                EXTRA_ARGS="--num-workers 1 --max-new-tokens 16", PYTHON=sys.executable, LAUNCHER_DIR=ROOT,
                MAX_REQUEUES=2, **extra)


# Two nodes, two processes each, on the CPU: the sbatch options that replace the GPU lines of the scripts.
MODES = {
    "srun": ("eval_srun.sbatch", ["--nodes=2", "--ntasks-per-node=2", "--gpus-per-task=0", "--cpus-per-task=1",
                                  "--time=10"], {}),
    "torchrun": ("eval_torchrun.sbatch", ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
                                          "--cpus-per-task=2", "--time=10"], {"NPROC_PER_NODE": 2}),
}


# ---------------------------------------------------------------------------------------------- the tests

def test_srun_gives_each_task_its_place_and_topology_reads_it(slurm_env, tmp_path):
    from launcher.slurm import master_port_for_step

    probe = tmp_path / "where_am_i.py"
    probe.write_text(
        "import json, os\n"
        "from launcher.topology import detect\n"
        "topology = detect(env=os.environ, visible_gpus=0)\n"
        "names = ['SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID', 'SLURM_NODEID', 'SLURMD_NODENAME',\n"
        "         'SLURM_JOB_NODELIST', 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE', 'SLURM_JOB_ID',\n"
        "         'SLURM_STEP_ID']\n"
        "print(json.dumps({**{name: os.environ.get(name) for name in names}, 'topology': topology.to_json(),\n"
        "                  'master': [topology.master_addr, topology.master_port]}))\n")
    # No MASTER_ADDR / MASTER_PORT: every task derives the same pair from the step.
    result = subprocess.run(["srun", "--nodes=2", "--ntasks=4", sys.executable, str(probe)], capture_output=True,
                            text=True, env=slurm_env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, explain(result)
    tasks = sorted((json.loads(line) for line in result.stdout.splitlines()),
                   key=lambda task: int(task["SLURM_PROCID"]))
    places = [(task["SLURM_PROCID"], task["SLURM_NTASKS"], task["SLURM_LOCALID"], task["SLURM_NODEID"],
               task["SLURMD_NODENAME"]) for task in tasks]
    assert places == [("0", "4", "0", "0", "n1"), ("1", "4", "1", "0", "n1"),
                      ("2", "4", "0", "1", "n2"), ("3", "4", "1", "1", "n2")]
    assert {task["SLURM_JOB_NODELIST"] for task in tasks} == {"n[1-2]"}
    assert {task["SLURM_STEP_TASKS_PER_NODE"] for task in tasks} == {"2(x2)"}
    topologies = [(task["topology"]["rank"], task["topology"]["world_size"], task["topology"]["local_rank"],
                   task["topology"]["local_world_size"], task["topology"]["node_rank"], task["topology"]["launcher"])
                  for task in tasks]
    assert topologies == [(0, 4, 0, 2, 0, "slurm"), (1, 4, 1, 2, 0, "slurm"),
                          (2, 4, 0, 2, 1, "slurm"), (3, 4, 1, 2, 1, "slurm")]
    # n1 does not resolve: its address comes from `scontrol show node n1` (NodeAddr).
    job_id, step_id = tasks[0]["SLURM_JOB_ID"], tasks[0]["SLURM_STEP_ID"]
    assert {tuple(task["master"]) for task in tasks} == {("127.0.0.1", master_port_for_step(job_id, step_id))}


def test_uneven_tasks_per_node_are_read_per_node(slurm_env):
    command = ("import json, os; from launcher.topology import detect; t = detect(env=os.environ, visible_gpus=0); "
               "print(json.dumps([t.rank, t.local_rank, t.local_world_size, t.node_rank, "
               "os.environ['SLURM_STEP_TASKS_PER_NODE']]))")
    env = dict(slurm_env, MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
    result = subprocess.run(["srun", "--nodes=2", "--ntasks=3", "--distribution=block", sys.executable, "-c", command],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, explain(result)
    rows = sorted(json.loads(line) for line in result.stdout.splitlines())
    assert rows == [[0, 0, 2, 0, "2,1"], [1, 1, 2, 0, "2,1"], [2, 0, 1, 1, "2,1"]]


def test_rendezvous_inside_a_job_is_the_first_nodes_address_and_a_port_from_the_job_id(slurm_env):
    from launcher.slurm import master_port_for_job

    command = ('echo "$SLURM_JOB_ID $(' + sys.executable +
               ' -m launcher.slurm rendezvous --nodelist "$SLURM_JOB_NODELIST" --job-id "$SLURM_JOB_ID")"')
    result = subprocess.run(["srun", "--nodes=2", "--ntasks=2", "bash", "-c", command], capture_output=True,
                            text=True, env=slurm_env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, explain(result)
    answers = {tuple(line.split()) for line in result.stdout.splitlines()}
    assert len(answers) == 1, f"the nodes disagree: {answers}"
    job_id, address, port = answers.pop()
    # Simulated node names do not resolve: the address comes from `scontrol show node n1` (NodeAddr).
    assert address == "127.0.0.1" and int(port) == master_port_for_job(job_id)


@pytest.mark.parametrize("mode", ["srun", "torchrun"])
def test_two_nodes_two_processes_each_predict_what_one_process_predicts(
        mode, slurm_env, native_checkpoint, data_root, reference_predictions, tmp_path):
    script, options, extra = MODES[mode]
    out_dir, log = tmp_path / "out", tmp_path / "job.log"
    job_id = submit(script, options, slurm_env, log, **job_variables(native_checkpoint, data_root, out_dir, **extra))
    info = wait_for_job(job_id, slurm_env, log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), read_log(log)
    assert predictions(out_dir, TASK) == reference_predictions, read_log(log)
    run = manifest(out_dir)
    assert run["status"] == "done"
    assert run["topology"]["world_size"] == 4
    assert run["topology"]["launcher"] == ("slurm" if mode == "srun" else "torchrun")


PREEMPTIONS = {
    # The signal Slurm sends on preemption (and `scancel --signal=TERM`): it reaches every task directly.
    "srun-SIGTERM": ("srun", ["--signal=TERM"]),
    # The time-limit warning of `#SBATCH --signal=B:USR1@120`: the batch shell only; its trap passes it on.
    "srun-SIGUSR1-to-batch-shell": ("srun", ["--batch", "--signal=USR1"]),
    "torchrun-SIGTERM": ("torchrun", ["--signal=TERM"]),
    "torchrun-SIGUSR1-to-batch-shell": ("torchrun", ["--batch", "--signal=USR1"]),
}


@pytest.mark.parametrize("case", list(PREEMPTIONS))
def test_a_stopped_job_requeues_itself_and_resumes_with_every_item_exactly_once(
        case, slurm_env, native_checkpoint, data_root, reference_predictions, tmp_path):
    mode, scancel_options = PREEMPTIONS[case]
    script, options, extra = MODES[mode]
    out_dir, log = tmp_path / "out", tmp_path / "job.log"
    job_id = submit(script, options, slurm_env, log, **job_variables(native_checkpoint, data_root, out_dir, **extra))
    wait_for_journal_lines(out_dir, 8, job_id, slurm_env, log)
    subprocess.run(["scancel", *scancel_options, job_id], env=slurm_env, check=True, timeout=30)
    info = wait_for_job(job_id, slurm_env, log)

    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), read_log(log)
    assert manifest(out_dir)["status"] == "done", read_log(log)
    assert predictions(out_dir, TASK) == reference_predictions, read_log(log)
    per_attempt = journal_ids(out_dir)
    assert sorted(per_attempt) == [0, 1], f"journals by attempt: { {a: len(ids) for a, ids in per_attempt.items()} }"
    assert 0 < len(per_attempt[0]) < ITEMS, "the signal did not land mid-run"
    counts = Counter(item for ids in per_attempt.values() for item in ids)
    assert set(counts) == {row["id"] for row in reference_predictions}
    assert [item for item, seen in counts.items() if seen != 1] == [], "items journaled more than once"


def test_a_cancelled_job_stays_cancelled_and_a_resubmission_resumes(
        slurm_env, native_checkpoint, data_root, reference_predictions, tmp_path):
    script, options, extra = MODES["srun"]
    out_dir, log = tmp_path / "out", tmp_path / "job.log"
    variables = job_variables(native_checkpoint, data_root, out_dir, **extra)
    job_id = submit(script, options, slurm_env, log, **variables)
    wait_for_journal_lines(out_dir, 8, job_id, slurm_env, log)
    subprocess.run(["scancel", job_id], env=slurm_env, check=True, timeout=30)  # SIGCONT+SIGTERM, KILL after KillWait
    info = wait_for_job(job_id, slurm_env, log)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), read_log(log)
    assert manifest(out_dir)["status"] == "preempted", read_log(log)
    assert "not requeueing: the job is" in log.read_text(), read_log(log)

    second_log = tmp_path / "resubmitted.log"
    second = submit(script, options, slurm_env, second_log, **variables)
    info = wait_for_job(second, slurm_env, second_log)
    assert info["JobState"] == "COMPLETED", read_log(second_log)
    assert predictions(out_dir, TASK) == reference_predictions
    counts = Counter(item for ids in journal_ids(out_dir).values() for item in ids)
    assert len(counts) == ITEMS and set(counts.values()) == {1}


def test_torchrun_script_refuses_several_tasks_per_node(slurm_env, native_checkpoint, data_root, tmp_path):
    log = tmp_path / "job.log"
    options = ["--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5"]
    job_id = submit("eval_torchrun.sbatch", options, slurm_env, log,
                    **job_variables(native_checkpoint, data_root, tmp_path / "out", NPROC_PER_NODE=2))
    info = wait_for_job(job_id, slurm_env, log, timeout_s=60)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0")
    assert "--ntasks-per-node=1" in log.read_text() and "SLURM_NTASKS_PER_NODE=2" in log.read_text()


def test_torchrun_script_without_gpus_asks_for_nproc_per_node(slurm_env, native_checkpoint, data_root, tmp_path):
    log = tmp_path / "job.log"
    options = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5"]
    job_id = submit("eval_torchrun.sbatch", options, slurm_env, log,
                    **job_variables(native_checkpoint, data_root, tmp_path / "out"))
    info = wait_for_job(job_id, slurm_env, log, timeout_s=60)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0")
    assert "SLURM_GPUS_ON_NODE" in log.read_text() and "NPROC_PER_NODE" in log.read_text()


def _task_pid(job_id: str, procid: int) -> int:
    """The pid of `launch.py` task `procid` of a job on this machine (its DataLoader workers share its
    environment but were forked later, so the lowest pid is the task itself)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (b"launch.py" in command and f"SLURM_JOB_ID={job_id}".encode() in environ
                and f"SLURM_PROCID={procid}".encode() in environ):
            found.append(int(entry.name))
    assert found, f"no launch.py process of task {procid} in job {job_id}"
    return min(found)


def test_kill_9_of_one_task_under_srun_fails_the_job_fast_and_a_resubmission_resumes(
        slurm_env, native_checkpoint, data_root, reference_predictions, tmp_path):
    script, options, extra = MODES["srun"]
    out_dir, log = tmp_path / "out", tmp_path / "job.log"
    variables = job_variables(native_checkpoint, data_root, out_dir, **extra)
    job_id = submit(script, options, slurm_env, log, **variables)
    wait_for_journal_lines(out_dir, 8, job_id, slurm_env, log)
    killed_at = time.monotonic()
    os.kill(_task_pid(job_id, 1), signal.SIGKILL)
    info = wait_for_job(job_id, slurm_env, log)
    seconds = time.monotonic() - killed_at
    print(f"\nkill -9 of task 1 under srun -> job {info['JobState']} in {seconds:.1f} s")
    assert seconds < 60, read_log(log)
    assert info["Restarts"] == "0" and info["JobState"] != "COMPLETED", read_log(log)
    run = manifest(out_dir)
    assert run["status"] == "failed" and run["root_cause"]["rank"] == 1, read_log(log)

    second_log = tmp_path / "resubmitted.log"
    second = submit(script, options, slurm_env, second_log, **variables)
    assert wait_for_job(second, slurm_env, second_log)["JobState"] == "COMPLETED", read_log(second_log)
    assert predictions(out_dir, TASK) == reference_predictions
    counts = Counter(item for ids in journal_ids(out_dir).values() for item in ids)
    assert len(counts) == ITEMS and set(counts.values()) == {1}


# ------------------------------------------------------------------ plain `srun python launch.py` job scripts

def submit_commands(commands: str, sbatch_options: list[str], env: dict[str, str], log: Path, script: Path) -> str:
    """`sbatch` a job script holding only `commands` (what a user writes), not one of ours."""
    script.write_text("#!/bin/bash\n" + commands)
    result = subprocess.run(["sbatch", "--parsable", f"--output={log}", *sbatch_options, str(script)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 0, f"sbatch failed: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def launch_command(checkpoint, data_root, out_dir, *extra, workers: int = 1, batch_size: int = 1) -> str:
    args = [sys.executable, LAUNCH, "--checkpoint", checkpoint, "--task", TASK, "--data-root", data_root,
            "--out-dir", out_dir, "--num-workers", workers, "--max-new-tokens", 16, "--batch-size", batch_size,
            *extra]
    return " ".join(str(arg) for arg in args)


def test_a_job_whose_only_command_is_srun_launch_py_predicts_what_one_process_predicts(
        slurm_env, native_checkpoint, data_root, reference_predictions, tmp_path):
    from launcher.slurm import master_port_for_step

    out_dir, log = tmp_path / "out", tmp_path / "job.log"
    job_id = submit_commands(f"srun {launch_command(native_checkpoint, data_root, out_dir)}\n",
                             ["--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"], slurm_env, log,
                             tmp_path / "job.sh")
    info = wait_for_job(job_id, slurm_env, log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), read_log(log)
    assert predictions(out_dir, TASK) == reference_predictions, read_log(log)
    topology = manifest(out_dir)["topology"]
    assert (topology["launcher"], topology["world_size"]) == ("slurm", 4)
    assert topology["rendezvous"] == f"127.0.0.1:{master_port_for_step(job_id, 0)}"


def test_two_job_steps_side_by_side_on_one_node_meet_at_different_ports(
        slurm_env, native_checkpoint, data_root, reference_predictions, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join((data_root / "synthetic" / "test.jsonl").read_text().splitlines(keepends=True)[:24]))
    steps = "".join(f"srun --overlap --ntasks=2 {launch_command(native_checkpoint, data_root, tmp_path / name, '--data', data)} &\n"
                    for name in ("a", "b"))
    log = tmp_path / "job.log"
    job_id = submit_commands(steps + "wait\n", ["--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=10"],
                             slurm_env, log, tmp_path / "job.sh")
    info = wait_for_job(job_id, slurm_env, log)
    assert info["JobState"] == "COMPLETED", read_log(log)
    expected = [row for row in reference_predictions if int(row["id"]) < 24]
    rendezvous = set()
    for name in ("a", "b"):
        assert manifest(tmp_path / name)["status"] == "done", read_log(log)
        assert predictions(tmp_path / name, TASK) == expected
        rendezvous.add(manifest(tmp_path / name)["topology"]["rendezvous"])
    assert len(rendezvous) == 2, rendezvous


@pytest.mark.parametrize("kind,workers", [("generate-raises", 1), ("corrupt-image", 3)])
def test_a_failure_under_plain_srun_ends_every_process_with_its_verdict(
        kind, workers, slurm_env, faulty_checkpoint, data_root, tmp_path):
    """The failure matrix (tests/test_failure_matrix.py) under srun on two nodes: a model error on one
    batch, a corrupt image met in a worker."""
    import uuid

    data, bad_id = bad_item_data(data_root / "synthetic" / "test.jsonl", kind, 13, tmp_path / "data.jsonl")
    out_dir, log = tmp_path / "out", tmp_path / "job.log"
    marker = f"FAULT_CASE={uuid.uuid4().hex}"
    env = dict(slurm_env, PYTHONPATH=f"{EXIT_CHECK_DIR}{os.pathsep}{slurm_env['PYTHONPATH']}",
               FAULT_CASE=marker.split("=", 1)[1])
    watch = RunWatch(marker, out_dir / TASK)
    command = launch_command(faulty_checkpoint, data_root, out_dir, "--trust-remote-code", "--data", data,
                             workers=workers, batch_size=2)
    try:
        job_id = submit_commands(f"srun {command}\n", ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2",
                                                       "--time=10"], env, log, tmp_path / "job.sh")
        info = wait_for_job(job_id, env, log)
        gone_after = watch.wait_gone(30)
        since_verdict = time.time() - (out_dir / "run.json").stat().st_mtime
        print(f"\n{kind} under srun: job {info['JobState']}, every process gone {since_verdict:.1f} s after the verdict")
        assert since_verdict < 40 + gone_after, read_log(log)
    finally:
        watch.stop()
        watch.kill_all()
    assert sum(1 for command in (c for _, c in watch.processes.values()) if "launch.py" in command) >= 2 + 2 * workers
    run = manifest(out_dir)
    root = run["root_cause"]
    assert (info["JobState"], run["status"]) == ("FAILED", "failed"), read_log(log)
    assert root["rank"] in (0, 1) and root["observed_by"] == root["rank"]
    text = log.read_text(errors="replace")
    assert PROCESS_GROUP_LEAK_WARNING not in text and "Caught DataError" not in text, read_log(log)
    if kind == "generate-raises":
        assert root["kind"] == "exception" and "injected fault" in root["message"]
        assert info["ExitCode"] in ("3:0", "1:0"), read_log(log)      # srun: the highest task exit code
    else:
        assert root["kind"] == "user-error" and f"item {bad_id!r}" in root["message"]
        assert info["ExitCode"] == "2:0" and "Traceback" not in text, read_log(log)
    rows = watch.check_journals()
    journaled = {str(row["id"]) for file_rows in rows.values() for row in file_rows}
    assert journaled and bad_id not in journaled
