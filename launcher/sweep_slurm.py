"""A sweep as one Slurm job array: the script (from the template `sweep_array.sbatch`), its submission, and
what the queue says of it.

`python -m launcher sweep --slurm ...` writes `OUT_DIR/slurm/sweep-<time>.sbatch` with one array task per
checkpoint that has work left (its unfinished tasks only), `--array=0-(N-1)%R` with R = --parallel-runs,
the logs at `OUT_DIR/slurm/<job>_<index>.out`, and the #SBATCH lines the user gave (--sbatch, or those of
--sbatch-template) after the sweep's own, so the user's win; --array and --output are the sweep's and are
left out of the user's lines. It submits it with `sbatch --parsable`, records the job id and which array
index runs which checkpoint in OUT_DIR/sweep.json, and prints how to follow it. A sweep whose last array
is still in the queue is not submitted again.

`python -m launcher.sweep_slurm run-status RUN_JSON STARTED_AT` prints the status a run left in run.json
("stale" when the file is older than the run, "missing" when there is none): the job script reads it.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from launcher.errors import UserError
from launcher.outputs import atomic_write_text, read_json
from launcher.sweep import CheckpointPlan, SweepConfig, read_sweep_file, record_sweep
from launcher.outputs import archive_manifest
from launcher.sweep_local import LAUNCH_PY

TEMPLATE = Path(__file__).resolve().parent / "sweep_array.sbatch"
MAX_REQUEUES = 3
# Options the sweep sets itself: a user's line with one of them is left out (with a note).
_OWNED = ("--array", "-a", "--output", "-o", "--error", "-e")


def template_sbatch_lines(path: Path) -> list[str]:
    """The #SBATCH lines of a job script (everything else in it is ignored)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip().startswith("#SBATCH")]


def _option_name(line: str) -> str:
    option = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
    return option.split("=", 1)[0].split()[0] if option else ""


def sbatch_header(config: SweepConfig, count: int, log_dir: Path) -> tuple[list[str], list[str]]:
    """The script's #SBATCH lines (the sweep's, then the user's) and the user's lines left out."""
    cap = f"%{config.parallel_runs}" if config.parallel_runs else ""
    own = [f"#SBATCH --job-name={config.job_name or 'sweep-' + config.out_dir.resolve().name}",
           f"#SBATCH --array=0-{count - 1}{cap}",
           f"#SBATCH --output={log_dir / '%A_%a.out'}",
           "#SBATCH --open-mode=append",
           "#SBATCH --requeue",
           "#SBATCH --signal=B:USR1@120"]
    user = (template_sbatch_lines(config.sbatch_template) if config.sbatch_template else []) + \
        list(config.sbatch_lines)
    kept = [line for line in user if _option_name(line) not in _OWNED]
    dropped = [line for line in user if _option_name(line) in _OWNED]
    return own + kept, dropped


def _bash_array(name: str, values: Sequence[str], comments: Sequence[str] | None = None) -> str:
    lines = [f"{name}=("]
    for index, value in enumerate(values):
        comment = f"  # {comments[index]}" if comments else ""
        lines.append(f"    {shlex.quote(value)}{comment}")
    return "\n".join(lines) + "\n)"


def array_script(config: SweepConfig, plans: Sequence[CheckpointPlan], log_dir: Path,
                 work_dir: Path) -> tuple[str, list[str]]:
    """The job-array script for `plans` (array index i = plans[i]) and the user's #SBATCH lines left out."""
    header, dropped = sbatch_header(config, len(plans), log_dir)
    launch_args = list(config.launch_args) + (["--overwrite"] if config.overwrite else [])
    indices = [f"array task {index}: {plan.checkpoint.name}" for index, plan in enumerate(plans)]
    plan_text = "\n".join([
        "# ---- The sweep (written by python -m launcher sweep --slurm) -----------------------------------",
        f"WORK_DIR={shlex.quote(str(work_dir))}",
        f"LAUNCHER_DIR={shlex.quote(str(LAUNCH_PY.parent))}",
        f"PYTHON={shlex.quote(config.python)}",
        f"MAX_REQUEUES={MAX_REQUEUES}",
        "LAUNCH_ARGS=(" + " ".join(shlex.quote(arg) for arg in launch_args) + ")",
        _bash_array("CHECKPOINTS", [str(plan.checkpoint.path) for plan in plans], indices),
        _bash_array("OUT_DIRS", [str(config.run_dir(plan.checkpoint).resolve()) for plan in plans]),
        _bash_array("TASK_LISTS", [",".join(plan.to_run) for plan in plans]),
        "# ------------------------------------------------------------------------------------------------"])
    text = TEMPLATE.read_text(encoding="utf-8")
    text = text.replace("@@SBATCH_LINES@@", "\n".join(header)).replace("@@SWEEP_PLAN@@", plan_text)
    return text, dropped


def live_states(out_dir: Path) -> list[tuple[str, str]]:
    """(array task, state) of this sweep's last job array while it is in the queue; [] when it is not (or
    Slurm is not here)."""
    submissions = (read_sweep_file(out_dir) or {}).get("submissions", [])
    if not submissions or shutil.which("squeue") is None:
        return []
    job_id = submissions[-1]["job_id"]
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-j", str(job_id), "-o", "%i %T"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []   # an unknown (long finished) job id is an error to squeue
    return [tuple(line.split(None, 1)) for line in result.stdout.splitlines() if len(line.split(None, 1)) == 2]


def submit_sweep(config: SweepConfig, plans: Sequence[CheckpointPlan]) -> int:
    """Write the job array for `plans`, submit it (unless --no-submit) and print how to follow it."""
    live = live_states(config.out_dir)
    if live:
        job = (read_sweep_file(config.out_dir) or {})["submissions"][-1]["job_id"]
        shown = ", ".join(f"{task} {state}" for task, state in live[:6]) + (" ..." if len(live) > 6 else "")
        raise UserError(f"job array {job} of this sweep is still in the queue ({shown}): wait for it or "
                        f"`scancel {job}` before submitting the sweep again")
    log_dir = (config.out_dir / "slurm").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    script_path = log_dir / f"sweep-{time.strftime('%Y%m%dT%H%M%S')}.sbatch"
    text, dropped = array_script(config, plans, log_dir, Path.cwd())
    atomic_write_text(script_path, text)
    script_path.chmod(0o755)
    for line in dropped:
        print(f"[sweep] note: left out {line!r}: the sweep sets the array and its logs itself", file=sys.stderr)
    if not config.submit:
        print(f"[sweep] wrote {script_path} ({len(plans)} array task(s)); submit it with: sbatch {script_path}")
        return 0
    if shutil.which("sbatch") is None:
        raise UserError(f"sbatch is not on PATH: run this on a Slurm login node (the job script is {script_path}; "
                        "--no-submit writes it without submitting)")
    for plan in plans:  # the report keeps reading the timelines of tasks the new runs do not redo
        archive_manifest(config.run_dir(plan.checkpoint))
    result = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise UserError(f"sbatch {script_path} failed: {result.stderr.strip() or result.stdout.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    array = {str(index): plan.checkpoint.name for index, plan in enumerate(plans)}
    record_sweep(config, {"job_id": job_id, "script": str(script_path),
                          "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "array": array})
    cap = f", at most {config.parallel_runs} at once" if config.parallel_runs else ""
    print(f"[sweep] submitted job array {job_id}: {len(plans)} array task(s){cap} (script {script_path})")
    for index, plan in enumerate(plans):
        print(f"  {job_id}_{index}: {plan.checkpoint.name} ({', '.join(plan.to_run)})")
    print(f"follow it:      squeue -r -j {job_id}\n"
          f"                tail -f {log_dir}/{job_id}_<index>.out\n"
          f"where it stands (failed and preempted array tasks with their root cause):\n"
          f"                python -m launcher sweep --status --out-dir {config.out_dir}\n"
          f"when done:      python -m launcher report {config.out_dir}")
    return 0


def run_status(manifest: Path, started_at: float) -> str:
    """run.json's status, "stale" when it was written before `started_at` (an earlier run), "missing"."""
    try:
        if manifest.stat().st_mtime < started_at - 1:
            return "stale"
        return str(read_json(manifest).get("status", "unknown"))
    except (OSError, ValueError, AttributeError):
        return "missing"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 3 and argv[0] == "run-status":
        print(run_status(Path(argv[1]), float(argv[2])))
        return 0
    print("usage: python -m launcher.sweep_slurm run-status RUN_JSON STARTED_AT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
