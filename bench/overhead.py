"""Launcher overhead on the CPU: what the launcher itself costs around the model's work.

Two sections (`--sections gather,startup`):

* `gather`: rank 0's end of a task, on `--items` predictions (default 100,000) journaled by `--ranks`
  processes (default 8, 12,500 rows each): rows as the generic `vqa` task writes them (`prediction_row`:
  id, prediction, 10 annotator answers, question_id, question, image, metric), written with the product's
  `Journal` into `<task>/shards/rank*-attempt0000.jsonl` of a temporary folder (not timed). Then timed,
  part by part, exactly the calls `Evaluation._evaluate` makes: `read_journals` (every shard), `merge_rows`
  (against the `--items` `Item`s), `atomic_write_jsonl` of predictions.jsonl, the `vqa` task's `score` with
  `vqa_accuracy`, and `extra_outputs` + `atomic_write_json` of metrics.json. Repeated `--repeats` times;
  the median of each part is reported. Target: under 5 s in total.
* `startup`: start to first batch, weight loading excluded. `python launch.py` (1 process) and
  `torchrun --nproc_per_node 2 launch.py` (2 processes, gloo) on a tiny random checkpoint
  (`launcher.tiny_models.build_native_internvl`) and the synthetic shapes set
  (`eval_scripts.synthetic.generate_benchmark`), `--startup-repeats` times each. Read from run.json's
  per-rank `timeline` (seconds since the rank's `Evaluation` was created): `first_batch_s - load_s`, i.e.
  from the model loaded to the first batch journaled: the task's plan (rank 0 reads the journals and
  publishes the plan on the store; the others wait for it), cost estimates, the schedule, DataLoader
  workers started, the first batch prepared and generated. Also reported: `first_batch_s - load_seconds`
  (the whole start, topology and store included, less the weight-loading time itself) and the command's
  wall time (Python and torch imports included). Target: under 5 s.

Prints a table and writes JSON (`--out`)::

    OMP_NUM_THREADS=1 python -m bench.overhead --out bench/out/overhead.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from bench.common import free_port
from bench.report import print_table, write_report

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 5.0
GATHER_PARTS = ("read_journals", "merge_rows", "write_predictions", "score", "write_metrics")

# Short answers as VQAv2 / TextVQA annotators write them (numbers, yes/no, colours, words, phrases).
_ANSWERS = ("yes", "no", "2", "3", "1", "4", "red", "blue", "white", "black", "green", "a dog", "cat",
            "two", "Coca-Cola", "stop", "tennis", "baseball", "left", "right", "kitchen", "pizza", "man",
            "woman", "nothing", "10:30", "the sign", "frisbee", "skiing", "wood", "grass", "water", "sunny",
            "unanswerable", "3.5", "bus", "train", "table", "phone", "Nike")


# ------------------------------------------------------------------------------------------------
# (a) gather and score


def make_items_and_rows(n_items: int, n_answers: int, seed: int = 0):
    """`n_items` VQA items with `n_answers` annotator answers each, and each item's prediction row."""
    from eval_scripts.base import Item
    from eval_scripts.registry import get_task

    task = get_task("vqa")
    task.select_metric("vqa_accuracy")
    rng = random.Random(seed)
    items, rows = [], []
    for index in range(n_items):
        majority = rng.choice(_ANSWERS)
        answers = [majority if rng.random() < 0.6 else rng.choice(_ANSWERS) for _ in range(n_answers)]
        question_id = 1_000_000 + index
        image = f"data/textvqa/train_images/{index:08x}.jpg"
        item = Item(id=str(question_id), question=f"what is written on the object number {index}?",
                    images=(f"/data/{image}",), answer=answers,
                    fields={"question_id": question_id, "question": f"what is written on the object number {index}?",
                            "image": image, "metric": "vqa_accuracy", "question_type": rng.choice(("what", "how many", "is the"))})
        prediction = majority if rng.random() < 0.7 else rng.choice(_ANSWERS)
        items.append(item)
        rows.append(task.prediction_row(item, prediction))
    return task, items, rows


def write_journals(task_dir: Path, rows: Sequence[dict], n_ranks: int, rows_per_append: int = 500) -> list[Path]:
    """Contiguous shards of `rows`, one product `Journal` per rank (attempt 0), appended in chunks."""
    from launcher.journal import Journal, journal_path
    from launcher.scheduler import contiguous_shard

    paths = []
    for rank in range(n_ranks):
        shard = contiguous_shard(len(rows), rank, n_ranks)
        with Journal(journal_path(task_dir, rank, 0)) as journal:
            for start in range(shard.start, shard.stop, rows_per_append):
                journal.append(rows[start:min(start + rows_per_append, shard.stop)])
        paths.append(journal.path)
    return paths


def gather_once(task, items, task_dir: Path) -> tuple[dict[str, float], Any]:
    """Rank 0's merge and scoring, timed part by part, as `Evaluation._evaluate` does it."""
    from launcher.gather import merge_rows
    from launcher.journal import read_journals
    from launcher.outputs import (
        atomic_write_json,
        atomic_write_jsonl,
        atomic_write_text,
    )

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    row_sets = [read_journals(task_dir)]
    lap("read_journals")
    predictions = merge_rows(items, row_sets)
    lap("merge_rows")
    atomic_write_jsonl(task_dir / "predictions.jsonl", predictions)
    lap("write_predictions")
    score = task.score(predictions)
    lap("score")
    for filename, text in task.extra_outputs(predictions).items():
        atomic_write_text(task_dir / filename, text)
    atomic_write_json(task_dir / "metrics.json", score.to_json(task.name))
    lap("write_metrics")
    return seconds, score


def run_gather(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    task, items, rows = make_items_and_rows(args.items, args.answers, args.seed)
    with tempfile.TemporaryDirectory(prefix="overhead-gather-") as scratch:
        task_dir = Path(scratch) / task.name
        paths = write_journals(task_dir, rows, args.ranks)
        journal_bytes = sum(path.stat().st_size for path in paths)
        del rows
        setup_s = time.perf_counter() - started
        repeats = []
        score = None
        for _ in range(args.repeats):
            seconds, score = gather_once(task, items, task_dir)
            repeats.append({name: round(value, 4) for name, value in seconds.items()})
        predictions_bytes = (task_dir / "predictions.jsonl").stat().st_size
    parts = {name: round(statistics.median(run[name] for run in repeats), 4) for name in GATHER_PARTS}
    totals = [round(sum(run.values()), 4) for run in repeats]
    total = round(statistics.median(totals), 4)
    return {"items": args.items, "ranks": args.ranks, "rows_per_rank": args.items // args.ranks,
            "answers_per_item": args.answers, "task": task.name, "metric": score.metric,
            "score": round(score.score, 3), "n_scored": score.n, "journal_mib": round(journal_bytes / 2**20, 1),
            "predictions_mib": round(predictions_bytes / 2**20, 1), "setup_s_untimed": round(setup_s, 2),
            "repeats": repeats, "totals_s": totals, "parts_s": parts, "total_s": total,
            "slowest_total_s": max(totals), "target_s": TARGET_S, "meets_target": max(totals) < TARGET_S,
}


# ------------------------------------------------------------------------------------------------
# (b) start to first batch


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", NCCL_NVLS_ENABLE="0")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    return env


def launch_command(nproc: int, launch_args: Sequence[str]) -> list[str]:
    launch = str(REPO / "launch.py")
    if nproc == 1:
        return [sys.executable, launch, *launch_args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), launch, *launch_args]


def rank_startup(entry: dict[str, Any], process: dict[str, Any] | None) -> dict[str, Any]:
    """One rank's start-up figures from its run.json `per_rank` entry and `processes` entry."""
    timeline = entry.get("timeline")
    if not timeline:
        raise RuntimeError("run.json has no per-rank timeline: this bench needs the launcher's per-rank "
                           "`timeline` (launcher/evaluation.py)")
    load_seconds = (process or {}).get("load_seconds")
    if timeline.get("first_batch_s") is None:  # dynamic schedule: the other ranks took every batch
        return {"load_s": timeline["load_s"], "first_batch_s": None, "first_batch_after_load_s": None,
                "weights_load_s": load_seconds, "note": "no batch claimed"}
    first = timeline["batches"][0]
    result = {"load_s": timeline["load_s"], "first_batch_s": timeline["first_batch_s"],
              "first_batch_after_load_s": round(timeline["first_batch_s"] - timeline["load_s"], 3),
              "plan_s": round(timeline.get("task_start_s", timeline["load_s"]) - timeline["load_s"], 3),
              "first_batch_ready_s": round(first[0] - timeline.get("task_start_s", timeline["load_s"]), 3),
              "first_batch_generate_s": round(first[1] - first[0], 3), "weights_load_s": load_seconds}
    if load_seconds is not None:
        result["first_batch_minus_weights_s"] = round(timeline["first_batch_s"] - load_seconds, 3)
    return result


def run_startup(args: argparse.Namespace) -> dict[str, Any]:
    from eval_scripts.synthetic import generate_benchmark
    from launcher.tiny_models import build_native_internvl

    runs = []
    with tempfile.TemporaryDirectory(prefix="overhead-startup-") as scratch:
        scratch_path = Path(scratch)
        checkpoint = build_native_internvl(scratch_path / "checkpoint", seed=0)
        data_root = scratch_path / "data"
        generate_benchmark(data_root / "synthetic", n_items=args.startup_items, seed=1234, split="test")
        for nproc in args.procs:
            for repeat in range(args.startup_repeats):
                out_dir = scratch_path / f"out-{nproc}-{repeat}"
                launch_args = ["--checkpoint", str(checkpoint), "--task", "synthetic_shapes", "--data-root",
                               str(data_root), "--out-dir", str(out_dir), "--batch-size", str(args.batch_size),
                               "--num-workers", str(args.num_workers), "--schedule", args.schedule]
                command = launch_command(nproc, launch_args)
                started = time.perf_counter()
                done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True,
                                      timeout=args.startup_timeout, check=False)
                wall = time.perf_counter() - started
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
                manifest = json.loads((out_dir / "run.json").read_text())
                per_rank = manifest["tasks"]["synthetic_shapes"]["per_rank"]
                processes = {entry["topology"]["rank"]: entry for entry in manifest.get("processes", [])
                             if "topology" in entry and "rank" in entry["topology"]}
                ranks = [{"rank": rank, **rank_startup(entry, processes.get(rank))}
                         for rank, entry in enumerate(per_rank)]
                measured = [r["first_batch_after_load_s"] for r in ranks if r["first_batch_after_load_s"] is not None]
                runs.append({"nproc": nproc, "repeat": repeat, "wall_s": round(wall, 2),
                             "launcher": manifest.get("topology", {}).get("launcher"), "ranks": ranks,
                             "max_first_batch_after_load_s": max(measured)})
    worst = max(run["max_first_batch_after_load_s"] for run in runs)
    return {"checkpoint": "tiny native InternVL (random weights, build_native_internvl seed 0)",
            "task": "synthetic_shapes", "items": args.startup_items, "batch_size": args.batch_size,
            "num_workers": args.num_workers, "schedule": args.schedule, "runs": runs,
            "max_first_batch_after_load_s": worst, "target_s": TARGET_S, "meets_target": worst < TARGET_S}


# ------------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    gather = report.get("gather")
    if gather:
        where = f"{gather['items']} rows, {gather['ranks']} ranks"
        for name in GATHER_PARTS:
            rows.append({"section": "gather", "what": f"{name} ({where})", "seconds": gather["parts_s"][name]})
        rows.append({"section": "gather", "what": f"total, median of {len(gather['repeats'])} (slowest "
                                                  f"{gather['slowest_total_s']})",
                     "seconds": gather["total_s"], "target_s": gather["target_s"], "ok": gather["meets_target"]})
    startup = report.get("startup")
    if startup:
        for run in startup["runs"]:
            for rank in run["ranks"]:
                if rank["first_batch_after_load_s"] is None:
                    rows.append({"section": "startup", "what": f"{run['nproc']} proc, repeat {run['repeat']}, rank "
                                                               f"{rank['rank']}", "detail": rank["note"]})
                    continue
                rows.append({"section": "startup", "what": f"{run['nproc']} proc, repeat {run['repeat']}, rank "
                                                           f"{rank['rank']}: model loaded -> first batch",
                             "seconds": rank["first_batch_after_load_s"],
                             "detail": f"plan {rank['plan_s']}, ready {rank['first_batch_ready_s']}, generate "
                                       f"{rank['first_batch_generate_s']}; start-weights "
                                       f"{rank.get('first_batch_minus_weights_s')}; wall {run['wall_s']}"})
        rows.append({"section": "startup", "what": "worst", "seconds": startup["max_first_batch_after_load_s"],
                     "target_s": startup["target_s"], "ok": startup["meets_target"]})
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--sections", default="gather,startup", help="comma list of gather, startup")
    parser.add_argument("--items", type=int, default=100_000, help="gather: predictions in all")
    parser.add_argument("--ranks", type=int, default=8, help="gather: journals (one per rank)")
    parser.add_argument("--answers", type=int, default=10, help="gather: reference answers per item")
    parser.add_argument("--repeats", type=int, default=3, help="gather: timed repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--procs", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                        help="startup: process counts (1 = plain python, more = torchrun)")
    parser.add_argument("--startup-repeats", type=int, default=2)
    parser.add_argument("--startup-items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4, help="startup: enough batches for every rank")
    parser.add_argument("--num-workers", type=int, default=2, help="startup: the launcher's default")
    parser.add_argument("--schedule", choices=("static", "dynamic"), default="dynamic")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    args.sections = [value for value in args.sections.split(",") if value]
    unknown = set(args.sections) - {"gather", "startup"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"kind": "overhead", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "command": " ".join(["python -m bench.overhead"] + list(sys.argv[1:] if argv is None
                                                                                         else argv)),
                              "machine": machine()}
    if "gather" in args.sections:
        report["gather"] = run_gather(args)
    if "startup" in args.sections:
        report["startup"] = run_startup(args)
    print_table(table_rows(report), ("section", "what", "seconds", "target_s", "ok", "detail"))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
