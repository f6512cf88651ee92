"""`python -m launcher sweep`: many checkpoints x tasks as one resumable job.

Each checkpoint is one run of the existing launcher (`launch.py`, the model loaded once for all its tasks),
with its results under `OUT_DIR/<checkpoint name>/`. Every flag that is not the sweep's own goes to each
`launch.py` unchanged (`--data-root`, `--batch-size`, `--max-new-tokens`, `--dtype`, ...)::

    # every saved step of a training run, two benchmarks, one run after another on this machine
    python -m launcher sweep --checkpoints 'runs/a/checkpoint-*' --task textvqa_val,mme --data-root data/ \\
        --out-dir results/a

    # a file of model folders (one per line), 8 GPUs as 4 groups of 2: four runs side by side
    python -m launcher sweep --checkpoints candidates.txt --task mmbench_dev_en --gpus-per-run 2 --out-dir results/c

    # a Slurm job array, one array task per checkpoint, at most 4 at once; #SBATCH lines passed through
    python -m launcher sweep --checkpoints 'runs/a/checkpoint-*' --task textvqa_val --out-dir /shared/results/a \\
        --slurm --parallel-runs 4 --sbatch '--nodes=1 --ntasks-per-node=8 --gpus-per-task=1 --time=04:00:00'

    # where it stands: done / partial / pending per pair; failed and preempted runs with their root cause
    python -m launcher sweep --status --out-dir results/a

    # one table and one page for everything under a folder
    python -m launcher report results/a

Resuming: rerun the same command. A (checkpoint, task) pair whose task folder holds metrics.json and a
matching fingerprint is skipped (a checkpoint with every task done is not started at all); an unfinished
one resumes from its journals; a pair that was run with other settings is refused unless --overwrite, as
launch.py refuses it. `launcher/sweep_state.py` says exactly what counts as done.

Locally, `--gpus-per-run G` (default: every visible GPU) cuts the visible GPUs into groups; as many runs
go side by side as there are groups (`--parallel-runs` fewer), each with CUDA_VISIBLE_DEVICES set to its
group and `torchrun --nproc_per_node G/K` (K = --gpus-per-model) when that is more than one process.
On the CPU the runs go one after another (`--parallel-runs N`, `--processes-per-run P` to change that).
SIGTERM or Ctrl-C stops the running runs gracefully (journals flushed, exit 75); a run never outlives the
sweep that started it. With --slurm, see `launcher/sweep_slurm.py`.
"""
from __future__ import annotations

import argparse
import glob
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from eval_scripts.registry import get_task
from launcher.cli import RunConfig, build_parser, parse_args
from launcher.coordination import now_iso
from launcher.errors import EXIT_USER_ERROR, UserError
from launcher.outputs import atomic_write_json, read_json
from launcher.sweep_state import CHANGED, DONE, PairState, RunOutcome, pair_state, run_outcome, task_inputs

SWEEP_FILE = "sweep.json"
# launch.py flags the sweep sets itself for every run, or that make no sense in a sweep.
_OWN_FLAGS = {"checkpoint": "--checkpoints", "tasks": "--task", "out_dir": "--out-dir", "overwrite": "--overwrite"}
_NOT_IN_A_SWEEP = ("dry_run", "selftest", "list_tasks")


@dataclass(frozen=True)
class Checkpoint:
    """One model folder of the sweep and the name of its results folder (`OUT_DIR/<name>/`)."""

    name: str
    path: Path


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs, parsed once."""

    checkpoints: tuple[Checkpoint, ...]
    tasks: tuple[str, ...]
    out_dir: Path
    launch_args: tuple[str, ...] = ()
    overwrite: bool = False
    status_only: bool = False
    slurm: bool = False
    submit: bool = True
    sbatch_lines: tuple[str, ...] = ()
    sbatch_template: Path | None = None
    job_name: str | None = None
    parallel_runs: int | None = None
    gpus_per_run: int | None = None
    processes_per_run: int | None = None
    python: str = field(default=sys.executable)

    def run_dir(self, checkpoint: Checkpoint) -> Path:
        return self.out_dir / checkpoint.name

    def run_arguments(self, checkpoint: Checkpoint, tasks: Sequence[str]) -> list[str]:
        """launch.py's arguments for this checkpoint and these tasks."""
        arguments = [*self.launch_args, "--checkpoint", str(checkpoint.path), "--task", ",".join(tasks),
                     "--out-dir", str(self.run_dir(checkpoint))]
        return arguments + (["--overwrite"] if self.overwrite else [])

    def run_config(self, checkpoint: Checkpoint, tasks: Sequence[str] | None = None) -> RunConfig:
        return parse_args(self.run_arguments(checkpoint, tasks or self.tasks))


@dataclass(frozen=True)
class CheckpointPlan:
    """One checkpoint: the state of each of its pairs and what its last run said."""

    checkpoint: Checkpoint
    pairs: tuple[PairState, ...]
    outcome: RunOutcome

    @property
    def to_run(self) -> tuple[str, ...]:
        return tuple(pair.task for pair in self.pairs if pair.state != DONE)

    @property
    def changed(self) -> tuple[PairState, ...]:
        return tuple(pair for pair in self.pairs if pair.state == CHANGED)


# ------------------------------------------------------------------------------------------- checkpoints

def natural_key(text: str) -> list:
    """Sort key that puts checkpoint-200 before checkpoint-1000."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def collect_checkpoints(entries: Sequence[str]) -> list[Path]:
    """Model folders from --checkpoints: folders, globs (sorted by step) and files listing either, in order.

    A path given twice counts once. Raises UserError for an entry that names nothing usable.
    """
    found: list[Path] = []
    for entry in entries:
        if glob.has_magic(entry):
            matches = sorted((Path(match) for match in glob.glob(entry) if Path(match).is_dir()),
                             key=lambda path: natural_key(str(path)))
            if not matches:
                raise UserError(f"--checkpoints {entry!r} matches no folder")
            found += matches
        elif Path(entry).is_dir():
            found.append(Path(entry))
        elif Path(entry).is_file():
            lines = [line.strip() for line in Path(entry).read_text(encoding="utf-8").splitlines()]
            listed = [line for line in lines if line and not line.startswith("#")]
            if not listed:
                raise UserError(f"--checkpoints {entry}: the file lists no model folder (one path or glob a line)")
            found += collect_checkpoints(listed)
        else:
            raise UserError(f"--checkpoints {entry!r} is not a folder, a glob or a file listing folders")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def checkpoint_names(paths: Sequence[Path]) -> list[str]:
    """A results-folder name per checkpoint: its folder name, with parent folders prefixed where two
    checkpoints share a name (runs/a/checkpoint-100 and runs/b/checkpoint-100 -> a-checkpoint-100, ...)."""
    depth = {path: 1 for path in paths}

    def name(path: Path) -> str:
        parts = [part for part in path.parts if part not in ("/", "")]
        return "-".join(parts[-depth[path]:])

    while True:
        names = [name(path) for path in paths]
        clashes = {value for value in names if names.count(value) > 1}
        if not clashes:
            return names
        grew = False
        for path in paths:
            if name(path) in clashes and depth[path] < len(path.parts):
                depth[path] += 1
                grew = True
        if not grew:
            raise UserError(f"two checkpoints would share the results folder {sorted(clashes)[0]!r}")


# ------------------------------------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see python -m launcher sweep --help)")


def build_sweep_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m launcher sweep", allow_abbrev=False, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Every other flag goes to each launch.py run (see launch.py --help).")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="PATH",
                        help="model folders, globs (quote them) or files listing folders, one a line")
    parser.add_argument("--task", "--datasets", dest="tasks", help="comma list of tasks, run for every checkpoint")
    parser.add_argument("--out-dir", type=Path, default=Path("results"),
                        help="results of checkpoint C go to OUT_DIR/C/ (default: results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace task folders that hold a run with other settings (passed to launch.py)")
    parser.add_argument("--status", dest="status_only", action="store_true",
                        help="print where every pair stands and why runs failed; run nothing")
    local = parser.add_argument_group("on this machine")
    local.add_argument("--gpus-per-run", type=int, metavar="G",
                       help="GPUs of one run (default: every visible GPU); the visible GPUs make groups of G")
    local.add_argument("--processes-per-run", type=int, metavar="P",
                       help="processes of one run (default: G / --gpus-per-model; 1 on the CPU); more than "
                            "one starts torchrun")
    local.add_argument("--parallel-runs", type=int, metavar="R",
                       help="runs at once (default: the number of GPU groups; 1 on the CPU). With --slurm: "
                            "the job array's %%R limit (default: none)")
    slurm = parser.add_argument_group("Slurm")
    slurm.add_argument("--slurm", action="store_true", help="submit one job array: one array task per checkpoint")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTIONS",
                       help="#SBATCH options for every array task, e.g. '--nodes=2 --ntasks-per-node=8 "
                            "--gpus-per-task=1 --time=04:00:00' (repeatable)")
    slurm.add_argument("--sbatch-template", type=Path, metavar="FILE",
                       help="take the #SBATCH lines of this job script (other lines are ignored)")
    slurm.add_argument("--job-name", help="the job array's name (default: sweep-<out-dir name>)")
    slurm.add_argument("--no-submit", dest="submit", action="store_false",
                       help="write the job script and print the sbatch command, submit nothing")
    return parser


def parse_sweep_args(argv: Sequence[str]) -> SweepConfig:
    """Sweep flags into a SweepConfig; every other flag is checked as launch.py's and passed on."""
    namespace, launch_args = build_sweep_parser().parse_known_args(_join_sbatch_values(argv))
    _check_launch_args(launch_args)
    out_dir = namespace.out_dir
    tasks = tuple(name.strip() for name in (namespace.tasks or "").split(",") if name.strip())
    paths = collect_checkpoints(namespace.checkpoints)
    if namespace.status_only and not paths:
        saved = read_sweep_file(out_dir)
        if saved is None:
            raise UserError(f"{out_dir / SWEEP_FILE} not found: no sweep ran with --out-dir {out_dir} (or give "
                            "--checkpoints and --task with --status)")
        checkpoints = tuple(Checkpoint(entry["name"], Path(entry["path"])) for entry in saved["checkpoints"])
        tasks = tasks or tuple(saved["tasks"])
        launch_args = launch_args or list(saved["launch_args"])
    else:
        if not paths:
            raise UserError("--checkpoints is required: model folders, globs or a file listing them")
        checkpoints = tuple(Checkpoint(name, path.resolve())
                            for name, path in zip(checkpoint_names(paths), paths))
    if not tasks:
        raise UserError("--task is required (a comma list of tasks; see launch.py --list-tasks)")
    for name in tasks:
        get_task(name)  # unknown names fail here, with the closest match
    for flag, value in (("--gpus-per-run", namespace.gpus_per_run), ("--parallel-runs", namespace.parallel_runs),
                        ("--processes-per-run", namespace.processes_per_run)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    lines = tuple(line for options in namespace.sbatch for line in sbatch_option_lines(options))
    if (lines or namespace.sbatch_template or namespace.job_name or not namespace.submit) and not namespace.slurm:
        raise UserError("--sbatch, --sbatch-template, --job-name and --no-submit only make sense with --slurm")
    if namespace.slurm and (namespace.gpus_per_run or namespace.processes_per_run):
        raise UserError("--gpus-per-run and --processes-per-run are for runs on this machine; with --slurm the "
                        "#SBATCH lines (--sbatch) give each array task its nodes, tasks and GPUs")
    if namespace.sbatch_template is not None and not namespace.sbatch_template.is_file():
        raise UserError(f"--sbatch-template {namespace.sbatch_template}: no such file")
    config = SweepConfig(
        checkpoints=checkpoints, tasks=tasks, out_dir=out_dir, launch_args=tuple(launch_args),
        overwrite=namespace.overwrite, status_only=namespace.status_only, slurm=namespace.slurm,
        submit=namespace.submit, sbatch_lines=lines, sbatch_template=namespace.sbatch_template,
        job_name=namespace.job_name, parallel_runs=namespace.parallel_runs, gpus_per_run=namespace.gpus_per_run,
        processes_per_run=namespace.processes_per_run)
    config.run_config(checkpoints[0])  # launch.py's own checks of the whole command line, once
    return config


def _join_sbatch_values(argv: Sequence[str]) -> list[str]:
    """`--sbatch --time=5` as `--sbatch=--time=5`: argparse would take the value for an option of its own."""
    joined, arguments = [], list(argv)
    while arguments:
        argument = arguments.pop(0)
        if argument == "--sbatch" and arguments:
            argument = f"--sbatch={arguments.pop(0)}"
        joined.append(argument)
    return joined


def _check_launch_args(launch_args: Sequence[str]) -> None:
    values = vars(build_parser().parse_args(list(launch_args)))
    for key, flag in _OWN_FLAGS.items():
        if values.get(key):
            raise UserError(f"a sweep sets launch.py's --{key.replace('_', '-')} for every run: use the sweep's "
                            f"{flag} instead")
    for key in _NOT_IN_A_SWEEP:
        if values.get(key):
            raise UserError(f"--{key.replace('_', '-')} is not for a sweep: run it with launch.py on one checkpoint")


def sbatch_option_lines(options: str) -> list[str]:
    """'--nodes=2 --time=1:00:00' -> ['#SBATCH --nodes=2', '#SBATCH --time=1:00:00'] ('nodes=2' works too)."""
    lines, words = [], shlex.split(options)
    for index, word in enumerate(words):
        if not word.startswith("-"):
            if index and words[index - 1].startswith("-") and "=" not in words[index - 1]:
                lines[-1] += f" {shlex.quote(word)}"   # '-N 2' style: the value of the option before
                continue
            word = f"--{word}"
        lines.append(f"#SBATCH {word}")
    return lines


# ------------------------------------------------------------------------------------------- the plan

def make_plan(config: SweepConfig) -> list[CheckpointPlan]:
    """The state of every (checkpoint, task) pair, from the runs' own files."""
    plans = []
    for checkpoint in config.checkpoints:
        run_config = config.run_config(checkpoint)
        run_dir = config.run_dir(checkpoint)
        pairs = tuple(pair_state(run_dir, run_config, task) for task in config.tasks)
        plans.append(CheckpointPlan(checkpoint, pairs, run_outcome(run_dir)))
    return plans


def format_plan(plans: Sequence[CheckpointPlan], tasks: Sequence[str],
                array_tasks: dict[str, str] | None = None) -> str:
    """One row per checkpoint: each task's state and what the last run said."""
    header = ["checkpoint", *tasks, "last run"]
    if array_tasks:
        header.insert(1, "array task")
    rows = [header]
    for plan in plans:
        row = [plan.checkpoint.name, *(pair.describe() for pair in plan.pairs),
               plan.outcome.status or "-"]
        if array_tasks:
            row.insert(1, array_tasks.get(plan.checkpoint.name, "-"))
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def summary_line(plans: Sequence[CheckpointPlan], out_dir: Path) -> str:
    pairs = [pair for plan in plans for pair in plan.pairs]
    done = sum(pair.state == DONE for pair in pairs)
    partial = sum(pair.state == "partial" for pair in pairs)
    return (f"sweep: {len(plans)} checkpoint(s) x {len(plans[0].pairs) if plans else 0} task(s) -> {out_dir}: "
            f"{done} of {len(pairs)} pairs done, {partial} partial, {len(pairs) - done - partial} not started")


def failed_runs(plans: Sequence[CheckpointPlan], array_tasks: dict[str, str] | None = None) -> list[str]:
    """One line per checkpoint whose last run did not finish, with its root cause from run.json."""
    lines = []
    for plan in plans:
        if plan.outcome.status in (None, "done") or not plan.to_run:
            continue
        where = f" (array task {array_tasks[plan.checkpoint.name]})" if array_tasks and \
            plan.checkpoint.name in array_tasks else ""
        lines.append(f"  {plan.checkpoint.name}{where}: {plan.outcome.describe()}")
    return lines


def check_data(config: SweepConfig, tasks: Sequence[str]) -> None:
    """Read every task's data once, here: a missing or bad file is one error now, not one failed run per
    checkpoint later (launch.py reads them again; they are small next to a model)."""
    inputs = task_inputs(config.run_config(config.checkpoints[0], tasks))
    for name in tasks:
        get_task(name).load(inputs)


# ------------------------------------------------------------------------------------------- sweep.json

def read_sweep_file(out_dir: Path) -> dict | None:
    try:
        saved = read_json(out_dir / SWEEP_FILE)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def record_sweep(config: SweepConfig, submission: dict | None = None) -> None:
    """OUT_DIR/sweep.json: the sweep's checkpoints, tasks and launch flags (for --status and the report)
    and every job array submitted for it."""
    saved = read_sweep_file(config.out_dir) or {}
    record = {"checkpoints": [{"name": c.name, "path": str(c.path)} for c in config.checkpoints],
              "tasks": list(config.tasks), "launch_args": list(config.launch_args), "updated": now_iso(),
              "submissions": saved.get("submissions", []) + ([submission] if submission else [])}
    atomic_write_json(config.out_dir / SWEEP_FILE, record)


def latest_array_tasks(out_dir: Path) -> dict[str, str]:
    """checkpoint name -> the array task (JOB_INDEX) that last ran it, from sweep.json's submissions."""
    found: dict[str, str] = {}
    for submission in (read_sweep_file(out_dir) or {}).get("submissions", []):
        for index, name in submission.get("array", {}).items():
            found[name] = f"{submission['job_id']}_{index}"
    return found


# ------------------------------------------------------------------------------------------- entry point

def run(config: SweepConfig) -> int:
    """Plan, then run locally or submit; returns the exit code."""
    plans = make_plan(config)
    array_tasks = latest_array_tasks(config.out_dir) if config.status_only else None
    print(summary_line(plans, config.out_dir))
    print(format_plan(plans, config.tasks, array_tasks))
    if config.status_only:
        failures = failed_runs(plans, array_tasks)
        if failures:
            print("runs that did not finish (rerun the sweep to resume them):")
            print("\n".join(failures))
        from launcher.sweep_slurm import live_states

        live = live_states(config.out_dir)
        if live:
            print("in the Slurm queue: " + ", ".join(f"{job} {state}" for job, state in live))
        return 0
    changed = [(plan.checkpoint.name, pair) for plan in plans for pair in plan.changed]
    if changed and not config.overwrite:
        name, pair = changed[0]
        more = f" (and {len(changed) - 1} more pair(s))" if len(changed) > 1 else ""
        raise UserError(f"{config.out_dir / name / pair.task} holds a run with other settings (changed: "
                        f"{', '.join(pair.changed)}){more}. Use another --out-dir, or pass --overwrite to replace it.")
    todo = [plan for plan in plans if plan.to_run]
    if not todo:
        print(f"nothing to run: every pair is done. Report: python -m launcher report {config.out_dir}")
        return 0
    check_data(config, sorted({task for plan in todo for task in plan.to_run}))
    if config.slurm:
        from launcher.sweep_slurm import submit_sweep

        return submit_sweep(config, todo)
    from launcher.sweep_local import run_sweep_here

    return run_sweep_here(config, todo)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_sweep_args(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR

