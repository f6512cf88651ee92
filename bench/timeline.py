"""Per-rank timeline of one task as a PNG (drawn by launcher/timeline_image.py); two run.json files side by side.

    python -m bench.timeline RUN.json --task T --out timeline.png
    python -m bench.timeline RUN_A.json RUN_B.json --task T --out timeline.png     # e.g. static | dynamic
    python -m bench.timeline --demo --out bench/timeline_cpu.png                    # CPU demo, below

It reads `tasks.<task>.per_rank[r].timeline` of run.json (seconds since rank r's `Evaluation` started:
`load_s`, `task_start_s`, `first_batch_s`, `busy_s`, `idle_s`, `finish_s`, `batches` = [[start, end], ...])
and draws one row per rank: the load (topology, data, weights), the task's plan and cost estimates
(`load_s` .. `task_start_s`; a rank that loaded before rank 0 waits there for rank 0's plan), every batch as a bar (generate + journal), idle time between batches
(waiting for a prepared batch or the queue), the rank's finish line, and a dashed line at the slowest
rank's finish: the gap behind each row is the time that rank waited for the others. With two files, both
panels share one time scale. Title: task, schedule, ranks, slowest finish and the slowest / fastest ratio
of the task's time (`task_start_s` .. `finish_s`).

`--demo` makes the picture committed as `bench/timeline_cpu.png`: a tiny random InternVL
(`build_native_internvl`, text width 384 so that a long prompt costs real prefill time on the CPU), the
synthetic shapes set with a few very long questions (heavy items) in the first third of the file, run
with torchrun on `--demo-ranks` CPU processes (gloo), `--schedule static` then `--schedule dynamic`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import free_port
from launcher import timeline_image as _image
# The drawing lives in the package (the report draws the same pictures); these names stay importable here.
from launcher.timeline_image import (AXIS_H, COLORS, LEGEND, LEGEND_H, MARGIN, PANEL_WIDTH, ROW_H,  # noqa: F401
                                     TITLE_H, draw_legend, draw_panel, image_size, rank_timelines, summary)

REPO = Path(__file__).resolve().parents[1]


def load_run(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def pick_task(run: dict[str, Any], task: str | None, where: str = "run.json") -> str:
    try:
        return _image.pick_task(run, task, where)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def render(runs: Sequence[dict[str, Any]], task: str, out: str | Path, labels: Sequence[str | None] | None = None,
           panel_width: int = PANEL_WIDTH) -> tuple[int, int]:
    """launcher.timeline_image.render, with a one-line exit for a run.json without timelines."""
    try:
        return _image.render(runs, task, out, labels, panel_width)
    except ValueError as error:
        raise SystemExit(str(error)) from None


# ------------------------------------------------------------------------------------------------
# CPU demo: skewed synthetic set, static vs dynamic


HEAVY_WORDS = ("the", "red", "blue", "green", "circle", "square", "triangle", "left", "right", "object",
               "shape", "color", "is", "what", "of")


def write_skewed_data(data_root: Path, n_items: int, heavy: int, heavy_words: int, ranks: int, seed: int = 0) -> Path:
    """Synthetic shapes items; `heavy` of them, spread over the first rank's contiguous shard, get a question
    of `heavy_words` extra words (a long prefill). Returns the data file (pass it with --data)."""
    from eval_scripts.synthetic import generate_benchmark

    plain = generate_benchmark(data_root / "synthetic", n_items=n_items, seed=1234, split="test")
    rows = [json.loads(line) for line in plain.read_text().splitlines() if line.strip()]
    first_shard = -(-n_items // ranks)
    heavy_positions = set(range(0, first_shard, max(1, first_shard // heavy))[:heavy])
    rng = random.Random(seed)
    path = data_root / "synthetic" / "skewed.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for index, row in enumerate(rows):
            if index in heavy_positions:
                prefix = " ".join(rng.choice(HEAVY_WORDS) for _ in range(heavy_words))
                row = dict(row, question=f"{prefix} {row['question']}")
            handle.write(json.dumps(row) + "\n")
    return path


def run_demo(args: argparse.Namespace) -> list[Path]:
    from launcher.tiny_models import build_native_internvl

    work = Path(args.demo_dir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        build_native_internvl(checkpoint, seed=0, config_overrides={
            "text_hidden": 384, "text_layers": 4, "text_heads": 6, "text_kv_heads": 2})
    data_file = write_skewed_data(work / "data", args.demo_items, args.demo_heavy, args.demo_heavy_words,
                                  args.demo_ranks)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    run_files = []
    for schedule in ("static", "dynamic"):
        out_dir = work / f"run-{schedule}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.demo_ranks),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(REPO / "launch.py"),
                   "--checkpoint", str(checkpoint), "--task", "synthetic_shapes", "--data-root", str(work / "data"),
                   "--data", str(data_file), "--out-dir", str(out_dir), "--overwrite", "--schedule", schedule,
                   "--batch-size", str(args.demo_batch_size), "--max-new-tokens", str(args.demo_max_new_tokens),
                   "--num-workers", "1"]
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(f"demo run ({schedule}) exited {done.returncode}:\n{done.stderr[-3000:]}")
        print(f"[timeline] {schedule}: {time.perf_counter() - started:.1f} s -> {out_dir / 'run.json'}", flush=True)
        run_files.append(out_dir / "run.json")
    return run_files


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("runs", nargs="*", help="one or two run.json files (two: side by side)")
    parser.add_argument("--task", help="task name (default: the only task of the run)")
    parser.add_argument("--out", default="timeline.png")
    parser.add_argument("--labels", help="comma list, one per run.json (default: the file's folder name)")
    parser.add_argument("--panel-width", type=int, default=PANEL_WIDTH)
    parser.add_argument("--demo", action="store_true", help="run the CPU demo (static vs dynamic) and draw it")
    parser.add_argument("--demo-dir", default=str(REPO / "bench" / "out" / "timeline_demo"))
    parser.add_argument("--demo-ranks", type=int, default=3)
    parser.add_argument("--demo-items", type=int, default=60)
    parser.add_argument("--demo-heavy", type=int, default=6, help="items with a very long question")
    parser.add_argument("--demo-heavy-words", type=int, default=1800)
    parser.add_argument("--demo-batch-size", type=int, default=4)
    parser.add_argument("--demo-max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.demo and not 1 <= len(args.runs) <= 2:
        parser.error("give one or two run.json files, or --demo")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths = run_demo(args) if args.demo else [Path(p) for p in args.runs]
    runs = [load_run(path) for path in paths]
    task = args.task or pick_task(runs[0], None, str(paths[0]))
    for path, run in zip(paths, runs):
        pick_task(run, task, str(path))
    labels = args.labels.split(",") if args.labels else (["static", "dynamic"] if args.demo else
                                                         [Path(p).parent.name or None for p in paths])
    size = render(runs, task, args.out, labels, args.panel_width)
    for label, run in zip(labels, runs):
        print(f"[timeline] {label}: {json.dumps(summary(run, task))}")
    print(f"[timeline] wrote {args.out} ({size[0]}x{size[1]}, {Path(args.out).stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
