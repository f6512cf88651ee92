"""Check `python -m launcher sweep` on a GPU machine: GPU groups, runs side by side, torchrun per group, report.

    PYTHONPATH=. python -m bench.sweep_gpu                      # every visible GPU, groups of --gpus-per-run
    PYTHONPATH=. python -m bench.sweep_gpu --gpus-per-run 2 --checkpoints 6

Builds `--checkpoints` tiny random InternVLs (`launcher.tiny_models`, named checkpoint-100, -200, ...) and a
synthetic shapes set, sweeps them with `--gpus-per-run G` (so visible GPUs / G runs go side by side, each
under torchrun with G processes when G > 1), and checks from the files alone:

- every run is `done`, on CUDA, with the world size the group gives;
- runs that overlapped in time were given disjoint GPU groups (from the sweep's own "on GPUs ..." lines);
- a second identical sweep starts nothing ("nothing to run");
- `python -m launcher report` writes the page with one timeline per run.

It prints one line per run and exits 1 when a check fails. Nothing is downloaded; no network is needed.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus-per-run", type=int, default=1)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "sweep_gpu")
    args = parser.parse_args(argv)

    from eval_scripts.synthetic import generate_benchmark
    from launcher.tiny_models import build_native_internvl

    work = args.work
    models = []
    for index in range(args.checkpoints):
        folder = work / "run" / f"checkpoint-{100 * (index + 1)}"
        if not (folder / "config.json").is_file():
            build_native_internvl(folder, seed=index)
        models.append(folder)
    generate_benchmark(work / "data" / "synthetic", n_items=args.items, seed=1234, split="test")
    out_dir = work / f"results-g{args.gpus_per_run}"
    shutil.rmtree(out_dir, ignore_errors=True)   # a fresh sweep every time
    command = [sys.executable, "-m", "launcher", "sweep", "--checkpoints", *map(str, models), "--task",
               "synthetic_shapes", "--data-root", str(work / "data"), "--out-dir", str(out_dir),
               "--gpus-per-run", str(args.gpus_per_run), "--batch-size", "32", "--max-new-tokens", "8"]
    started = time.perf_counter()
    sweep = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(sweep.stdout[-4000:])
    failures = []
    if sweep.returncode != 0:
        failures.append(f"sweep exited {sweep.returncode}: {sweep.stderr[-2000:]}")
    groups = dict(re.findall(r"^\[sweep\] (\S+): .* on GPUs (\S+) \(log", sweep.stdout, re.MULTILINE))
    windows = {}
    for model in models:
        manifest = json.loads((out_dir / model.name / "run.json").read_text())
        world = manifest["topology"]["world_size"]
        processes = [process.get("topology", {}) for process in manifest.get("processes", [])]
        seen = sorted({process.get("visible_gpus") for process in processes})   # CUDA_VISIBLE_DEVICES: the group
        devices = sorted({gpu for process in processes for gpu in process.get("gpus") or []})
        begin = datetime.strptime(manifest["started"], "%Y-%m-%dT%H:%M:%S%z")
        end = datetime.strptime(manifest["updated"], "%Y-%m-%dT%H:%M:%S%z")
        windows[model.name] = (begin, end)
        print(f"{model.name}: status {manifest['status']}, world {world}, GPUs given {groups.get(model.name)}, "
              f"visible to it {seen}, used {devices}, {begin:%H:%M:%S}-{end:%H:%M:%S}")
        if manifest["status"] != "done" or world != args.gpus_per_run or seen != [args.gpus_per_run] \
                or len(devices) != args.gpus_per_run:
            failures.append(f"{model.name}: expected done with {args.gpus_per_run} process(es), each seeing the "
                            f"{args.gpus_per_run} GPU(s) of its group")
    names = list(windows)
    for first in range(len(names)):
        for second in range(first + 1, len(names)):
            a, b = names[first], names[second]
            overlap = windows[a][0] < windows[b][1] and windows[b][0] < windows[a][1]
            if overlap and set(groups.get(a, "").split(",")) & set(groups.get(b, "").split(",")):
                failures.append(f"{a} and {b} ran at the same time on GPUs {groups[a]} / {groups[b]}")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if "nothing to run" not in again.stdout:
        failures.append(f"the second sweep did not skip everything:\n{again.stdout[-2000:]}")
    report = subprocess.run([sys.executable, "-m", "launcher", "report", str(out_dir)], cwd=REPO, capture_output=True,
                            text=True)
    page = (out_dir / "report.html").read_text() if (out_dir / "report.html").is_file() else ""
    timelines = page.count('class="timeline"')
    if report.returncode != 0 or timelines != len(models):
        failures.append(f"report: exit {report.returncode}, {timelines} timelines for {len(models)} runs")
    print(f"sweep of {len(models)} checkpoints, {args.gpus_per_run} GPU(s) per run: {seconds:.1f} s")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
