"""`python -m launcher sweep --slurm` on a real Slurm cluster: the local two-node cluster (slurm/local-cluster.sh).

Without a cluster the module is skipped with the reason, and REQUIRE_SLURM_TESTS=1 (set by .ci/run once the
cluster is up) makes that an error: the check is tests/test_slurm_cluster.py's, imported with its fixtures.

One job array of two array tasks, side by side (one per node), each a two-process `srun python launch.py`
run on the CPU: checkpoint-2000 of the shared training run, stopped once with `scancel --signal=TERM` (its
array task requeues itself and resumes from its journals) and whose predictions must still equal the local
sweep's; and a copy whose weights file is cut short, whose array task fails: `sweep --status` lists it with
the root cause from its run.json, and the sweep planned again holds only that checkpoint. The same sweep is
refused while its array is still in the queue.
"""
from __future__ import annotations

import json
import re
from collections import Counter
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.runs import ROOT, explain, predictions
from tests.sweeps import TASKS, sweep_command
from tests.test_slurm_cluster import slurm_env  # noqa: F401  (the fixture; importing also skips without a cluster)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

SBATCH = "--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10"


def _wait_for_array(job_id: str, env: dict, log_dir: Path, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True,
                               env=env, timeout=30)
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    logs = "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in log_dir.glob("*.out"))
    pytest.fail(f"job array {job_id} still in the queue after {timeout_s} s\n{logs}")


def test_a_job_array_runs_one_checkpoint_per_array_task_and_status_names_the_failed_one(
        slurm_env, sweep_checkpoints, sweep_data_root, interrupted_sweep, tmp_path):  # noqa: F811
    good = sweep_checkpoints[1]
    broken = tmp_path / "models" / "checkpoint-9000"
    shutil.copytree(good, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out_dir = tmp_path / "results"
    command = sweep_command([good, broken], sweep_data_root, out_dir, "--slurm", "--parallel-runs", "2",
                            "--sbatch", SBATCH)
    submitted = subprocess.run(command, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, explain(submitted)
    job_id = re.search(r"submitted job array (\d+): 2 array task\(s\), at most 2 at once", submitted.stdout).group(1)
    assert f"{job_id}_0: {good.name} (synthetic_shapes, pope)" in submitted.stdout
    assert f"squeue -r -j {job_id}" in submitted.stdout and "sweep --status --out-dir" in submitted.stdout
    # Stop the good array task once its run is in its batch loop (a journal exists): preemption's signal.
    shards = out_dir / good.name / TASKS[0] / "shards"
    deadline = time.monotonic() + 300
    while not (shards.is_dir() and any(shards.iterdir())):
        assert time.monotonic() < deadline, f"array task {job_id}_0 never started its first task"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=TERM", f"{job_id}_0"], env=slurm_env, check=True, timeout=30)
    # While the array is in the queue (that task requeues itself), the same sweep is not submitted twice.
    twice = subprocess.run(command, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=120)
    assert twice.returncode == 2 and f"job array {job_id} of this sweep is still in the queue" in twice.stderr, \
        explain(twice)
    _wait_for_array(job_id, slurm_env, out_dir / "slurm")
    logs = "\n".join(path.read_text(errors="replace") for path in sorted((out_dir / "slurm").glob("*.out")))

    run = json.loads((out_dir / good.name / "run.json").read_text())
    assert run["status"] == "done", logs[-6000:]
    assert (run["topology"]["world_size"], run["topology"]["launcher"]) == (2, "slurm")
    for task in TASKS:   # two Slurm processes predict what the local sweep's one process predicted
        assert predictions(out_dir / good.name, task) == predictions(interrupted_sweep.out_dir / good.name, task)
    assert f"requeued (the next run resumes from the journals in {out_dir.resolve() / good.name})" in logs
    attempts = Counter(path.name.split("-")[1] for path in shards.glob("*.jsonl"))
    assert sorted(attempts) == ["attempt0000.jsonl", "attempt0001.jsonl"], logs[-6000:]
    journaled = [json.loads(line)["id"] for path in shards.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(journaled) == len(set(journaled)) == len(predictions(out_dir / good.name, TASKS[0]))
    failed = json.loads((out_dir / broken.name / "run.json").read_text())
    assert failed["status"] == "failed" and failed["root_cause"]["kind"] in ("exception", "user-error"), logs[-6000:]
    assert f"array task {job_id}_1 (job " in logs and "run.json status: failed; job state: RUNNING (" in logs

    status = subprocess.run([*command[:4], "--status", "--out-dir", str(out_dir)], cwd=ROOT, env=slurm_env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, explain(status)
    line = next(line for line in status.stdout.splitlines() if line.startswith(f"  {broken.name} (array task "))
    assert line.startswith(f"  {broken.name} (array task {job_id}_1): failed: rank ")
    assert failed["root_cause"]["message"].splitlines()[0][:60] in line
    done_row = next(row for row in status.stdout.splitlines() if row.startswith(good.name + " "))
    assert done_row.split()[1] == f"{job_id}_0" and done_row.rstrip().endswith("done")

    # Planned again: only the failed checkpoint is left (written, not submitted).
    again = subprocess.run(command + ["--no-submit"], cwd=ROOT, env=slurm_env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, explain(again)
    script = Path(again.stdout.split("wrote ")[1].split()[0]).read_text()
    assert "#SBATCH --array=0-0%2" in script
    assert f"    {broken}  # array task 0: {broken.name}" in script and str(good) not in script
