"""Speed where benchmarks spend it (issue 16): prefix sharing, `--batch-size auto`, the GPU's waits. One GPU.

`python -m bench.prefix --device cuda --shape 2b|8b [--sets pope,docvqa,distinct] [--out F.json]`

Sets (bench/data.py), each written to JPEG files on disk first (so a run reads files, as launch.py does):
`pope` (1 tile, 18 yes/no questions per image), `docvqa` (`--dynamic --max-num 12`, pages of 6-12 tiles,
3-5 questions each) and `distinct` (1 tile, one image per item: nothing to share).

"ours" is the product's path from a loaded model, exactly the calls `evaluation._evaluate` makes for a
task: image headers read for the costs, prefix groups, `--batch-size auto` from the GPU's free memory
(measured once after the model is built, as a run measures it after loading), the plan (`plan_batches`,
groups kept together), then `run_batches` (DataLoader workers, chunks, fast greedy decoding with its
CUDA graphs, journal). A fresh adapter per row, so no row reuses another's CUDA graphs. Rows:

* pope, docvqa: ours with default flags (batch auto, sharing on) and with `--no-prefix-sharing` (the
  same batch size); their ratio is the speed-up of sharing; token agreement of the two (bf16);
* distinct: ours with default flags, ours at each `--batch-sizes N`, and plain `generate` with the static
  cache (`cache_implementation="static"`, compiled) on batches made beforehand and already on the GPU (a
  first pass over the same batches compiles and warms, the second is timed): the issue's baseline.

Per ours row: items/s over the whole task (from the start of planning to the last batch journaled), the
wait before the first batch (model ready -> first generate call: costs, plan, workers started, first batch
prepared), the GPU's idle share after the first batch (time between batches / time from the first batch's
start to the end), batches, the batch size and why, the prefixes prefilled, peak GPU memory. The summary
checks the issue's targets: default >= best fixed batch and >= 1.2x plain static; POPE >= 3x and DocVQA
>= 2.5x unshared.

`--device cpu` runs the same with the tiny model (a check of this script, not a measurement).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import fill_defaults, sync_device
from bench.data import BenchTask, SyntheticSet, make_set
from bench.report import print_table, write_report
from bench.throughput import agreement, device_description, make_adapter, one_device
from launcher.generation import GenerationSettings


def plan_task(adapter, synthetic: SyntheticSet, prompts: list[str], settings: GenerationSettings,
              batch_size: int | None, free_bytes: int | None
              ) -> tuple[list[list[int]], Any, dict | None, dict[int, float]]:
    """What `Evaluation._evaluate` does between loading and the loop, one process: costs from the image
    headers, groups (when the adapter shares prefixes), the batch size, effective costs, the plan; and each
    item's image tokens (the first batch's lead piece)."""
    from launcher import prefix_sharing
    from launcher.batch_size import BatchSizeChoice, auto_batch_size
    from launcher.evaluation import CHAT_TEMPLATE_TOKENS, item_costs
    from launcher.scheduler import plan_batches

    items = synthetic.items
    pending = list(range(len(items)))
    groups = prefix_sharing.group_keys(items, pending) if adapter.prefix_sharing else None
    shared: dict[int, float] = {}
    costs = item_costs(adapter, items, prompts, pending, shared)
    if batch_size is not None:
        choice = BatchSizeChoice(batch_size, "flag")
    else:
        tiles = synthetic.max_num + 1 if synthetic.dynamic else 1
        choice = auto_batch_size(adapter.model.config, int(adapter.dtype.itemsize), free_bytes,
                                 int(max(costs.values())) + CHAT_TEMPLATE_TOKENS, settings.max_new_tokens, tiles)
    if groups is not None:
        costs = prefix_sharing.effective_costs(costs, shared, groups, choice.batch_size)
    return plan_batches(pending, costs, choice.batch_size, 0, 1, False, groups=groups), choice, groups, shared


def run_ours(model, processor, synthetic: SyntheticSet, dtype: torch.dtype, settings: GenerationSettings, *,
             batch_size: int | None, sharing: bool, num_workers: int, free_bytes: int | None,
             join_ahead: bool = True) -> dict[str, Any]:
    """One task through the product's path (module docstring); timings from the start of planning."""
    from launcher import prefix_sharing
    from launcher.journal import Journal, read_journal
    from launcher.runner import StopFlag, run_batches

    adapter = make_adapter(model, processor, synthetic, dtype)      # a fresh GreedyDecoder: no reused graphs
    reason = prefix_sharing.unsupported_reason(adapter, settings) if sharing else "--no-prefix-sharing"
    adapter.prefix_sharing = reason is None
    prompts = [BenchTask().prompt(item) for item in synthetic.items]
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as scratch:
        journal = Journal(Path(scratch) / "journal.jsonl")
        sync_device()
        started = time.perf_counter()
        batches, choice, groups, image_tokens = plan_task(adapter, synthetic, prompts, settings, batch_size,
                                                          free_bytes)
        planned = time.perf_counter()
        result = run_batches(task=BenchTask(), items=synthetic.items, prompts=prompts, batches=batches,
                             adapter=adapter, settings=settings, journal=journal, on_bad_item="error",
                             num_workers=num_workers, pin_memory=device.type == "cuda", queue_key=None, store=None,
                             stop=StopFlag(), on_batch_done=lambda *_: None, set_phase=lambda *_: None,
                             groups=groups, join_ahead=join_ahead, image_tokens=image_tokens)
        sync_device()
        finished = time.perf_counter()
        journal.close()
        rows = list(read_journal(journal.path))
    spans = result.batch_spans
    first_start = spans[0][0] if spans else finished
    after_first = finished - first_start
    busy = sum(end - start for start, end in spans)
    row = {"items": result.items_done, "seconds": round(finished - started, 3),
           "items_per_s": round(result.items_done / (finished - started), 2),
           "batch_size": choice.batch_size, "batch_source": choice.source, "batches": result.batches,
           "plan_s": round(planned - started, 3), "wait_before_first_batch_s": round(first_start - started, 3),
           "gpu_idle_share_after_first_batch": round(max(0.0, after_first - busy) / after_first, 4)
           if after_first > 0 else None,
           "busy_s": round(busy, 3), "joining_chunks_s": round(result.join_seconds, 3),
           "join_ahead": join_ahead, "oom_splits": result.oom_splits,
           "prefix_sharing": reason is None, "shared": dict(adapter.sharing_counts),
           "batch_choice": choice.to_json(), "predictions": {r["id"]: r["prediction"] for r in rows}}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del adapter
    release_memory()
    return row


def plain_static(model, processor, synthetic: SyntheticSet, dtype: torch.dtype, settings: GenerationSettings,
                 batch_size: int, num_workers: int) -> dict[str, Any]:
    """Plain `generate(cache_implementation="static")` on pre-made inputs on the GPU: first pass (compile,
    warm), then a timed pass over the same batches."""
    from bench.profile_generate import premade_batches, timed_generate
    from bench.throughput import item_costs
    from launcher.scheduler import plan_batches

    adapter = make_adapter(model, processor, synthetic, dtype, {"cache_implementation": "static"})
    prompts = [BenchTask().prompt(item) for item in synthetic.items]
    costs = item_costs(adapter, synthetic.items, prompts)
    batches = plan_batches(list(range(len(prompts))), costs, batch_size, 0, 1, False)
    made = premade_batches(adapter, synthetic.items, prompts, batches, max(1, num_workers))
    device = next(model.parameters()).device
    on_device = [inputs.to(device, dtype) for inputs in made]
    del made
    begun = time.perf_counter()
    timed_generate(adapter, on_device, settings)
    first_pass = time.perf_counter() - begun
    timed = timed_generate(adapter, on_device, settings)
    del on_device, adapter
    release_memory()
    return {**timed, "batch_size": batch_size, "first_pass_incl_compile_s": round(first_pass, 2)}


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import build_config, build_random_internvl
    from launcher.batch_size import free_bytes

    started = time.monotonic()
    deadline = started + args.budget_s
    device, dtype = one_device(args.device)
    image_size = build_config(args.shape).vision_config.image_size
    tile = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    # The sets first: their images are encoded in forked processes, before this process holds a CUDA context.
    sets: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench_prefix_"))
    sizes = {"pope": args.pope_items, "docvqa": args.docvqa_items, "distinct": args.distinct_items}
    built: dict[str, SyntheticSet] = {}
    for name in args.sets:
        made = time.perf_counter()
        built[name] = make_set(name, sizes[name], tile, args.seed).to_files(scratch / name)
        sets[name] = {**built[name].describe(), "build_s": round(time.perf_counter() - made, 1)}
        print(f"[prefix] set {name}: {sets[name]}", flush=True)
    model, processor = build_random_internvl(args.shape, device, dtype)
    print(f"[prefix] built {args.shape}: {model.bench_info}", flush=True)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    free = free_bytes([device])
    report: dict[str, Any] = {"kind": "prefix_sharing", "shape": args.shape, "model": model.bench_info,
                              "environment": device_description(device), "max_new_tokens": args.max_new_tokens,
                              "num_workers": args.num_workers, "free_bytes_after_build": free, "sets": sets,
                              "rows": [], "skipped": []}
    try:
        _rows(args, report, model, processor, built, device, dtype, settings, free, deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if device.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    report["seconds_total"] = round(time.monotonic() - started, 1)
    return report


def _rows(args: argparse.Namespace, report: dict[str, Any], model, processor, built: dict[str, SyntheticSet],
          device: torch.device, dtype: torch.dtype, settings: GenerationSettings, free: int | None,
          deadline: float) -> None:

    # Warm-up: kernels, allocator, worker fork, each set's shapes once (not timed).
    for name, synthetic in built.items() if args.warmup_items > 0 else ():
        warm = SyntheticSet(name, synthetic.items[:args.warmup_items], synthetic.dynamic, synthetic.max_num)
        run_ours(model, processor, warm, dtype, settings, batch_size=None, sharing=True,
                 num_workers=args.num_workers, free_bytes=free)

    def add(set_name: str, mode: str, row: dict[str, Any]) -> dict[str, Any]:
        entry = {"set": set_name, "mode": mode, **row}
        report["rows"].append(entry)
        shown = {k: v for k, v in entry.items() if k not in ("predictions", "batch_choice")}
        print(f"[prefix] {json.dumps(shown, default=str)}", flush=True)
        return entry

    def have_time(what: str, seconds: float) -> bool:
        if time.monotonic() + seconds <= deadline:
            return True
        report["skipped"].append(f"{what}: {int(deadline - time.monotonic())} s left of --budget-s")
        print(f"[prefix] skipped {what} (budget)", flush=True)
        return False

    common = {"num_workers": args.num_workers, "free_bytes": free}
    if args.compare_join_ahead:
        # Default flags with the next batch joined in a thread and without, alternating, same process.
        for name, synthetic in built.items():
            for repeat in range(args.compare_join_ahead):
                for ahead in (True, False):
                    if have_time(f"{name} join ahead {ahead}", args.min_row_s):
                        loop = "next batch joined in a thread, lead piece" if ahead else "joined after"
                        add(name, f"ours, default flags, {loop} (repeat {repeat + 1})",
                            run_ours(model, processor, synthetic, dtype, settings, batch_size=None, sharing=True,
                                     join_ahead=ahead, **common))
        return
    for name in ("pope", "docvqa"):
        if name not in built:
            continue
        if not have_time(f"{name} rows", args.min_row_s):
            continue
        shared = add(name, "ours, default flags (auto batch, prefix sharing)",
                     run_ours(model, processor, built[name], dtype, settings, batch_size=None, sharing=True, **common))
        if not have_time(f"{name} without sharing", args.min_row_s):
            continue
        alone = add(name, "ours, --no-prefix-sharing (same batch size)",
                    run_ours(model, processor, built[name], dtype, settings, batch_size=shared["batch_size"],
                             sharing=False, **common))
        alone["agreement_shared_vs_unshared"] = agreement(alone["predictions"], shared["predictions"])
        report.setdefault("ratios", {})[f"{name}_sharing_speedup"] = round(
            shared["items_per_s"] / alone["items_per_s"], 3)

    if "distinct" in built:
        synthetic = built["distinct"]
        default = None
        if have_time("distinct default", args.min_row_s):
            default = add("distinct", "ours, default flags (auto batch, prefix sharing)",
                          run_ours(model, processor, synthetic, dtype, settings, batch_size=None, sharing=True,
                                   **common))
        if device.type == "cuda" and have_time("plain generate static cache", args.static_min_s):
            add("distinct", "plain generate + static cache, pre-made inputs on the GPU",
                plain_static(model, processor, synthetic, dtype, settings, args.plain_batch_size, args.num_workers))
        elif device.type != "cuda":
            report["skipped"].append("plain static cache: compiles only on a GPU here")
        for batch_size in args.batch_sizes:
            if have_time(f"distinct batch {batch_size}", args.min_row_s):
                add("distinct", f"ours, --batch-size {batch_size}",
                    run_ours(model, processor, synthetic, dtype, settings, batch_size=batch_size, sharing=True,
                             **common))
        if default is not None:
            fixed = [row for row in report["rows"] if row["set"] == "distinct" and "--batch-size" in row["mode"]]
            plain = [row for row in report["rows"] if row["mode"].startswith("plain generate")]
            ratios = report.setdefault("ratios", {})
            if fixed:
                ratios["default_over_best_fixed"] = round(
                    default["items_per_s"] / max(row["items_per_s"] for row in fixed), 3)
            if plain:
                ratios["default_over_plain_static"] = round(default["items_per_s"] / plain[0]["items_per_s"], 3)


TARGETS = {"pope_sharing_speedup": 3.0, "docvqa_sharing_speedup": 2.5, "default_over_best_fixed": 1.0,
           "default_over_plain_static": 1.2}


def summary_rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ratio and shape, with the target; the 8B ratios also against the 2B ones (within 10%)."""
    by_shape = {report["shape"]: report.get("ratios", {}) for report in reports}
    rows = []
    for name, target in TARGETS.items():
        for shape, ratios in by_shape.items():
            if name not in ratios:
                continue
            row = {"ratio": name, "shape": shape, "value": ratios[name], "target": f">= {target}",
                   "met": ratios[name] >= target}
            if shape != "2b" and name in by_shape.get("2b", {}):
                row["vs_2b"] = round(ratios[name] / by_shape["2b"][name], 3)
            rows.append(row)
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shape", default=None, help="tiny, 2b, 8b (default: 2b on cuda, tiny on cpu)")
    parser.add_argument("--sets", type=lambda s: [v for v in s.split(",") if v], default=None,
                        help="comma list of pope, docvqa, distinct (default: all three)")
    parser.add_argument("--pope-items", type=int, default=None)
    parser.add_argument("--docvqa-items", type=int, default=None)
    parser.add_argument("--distinct-items", type=int, default=None)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                        help="distinct set: fixed batch sizes to compare with the default")
    parser.add_argument("--plain-batch-size", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--warmup-items", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip rows that would start past this")
    parser.add_argument("--min-row-s", type=float, default=None, help="a row starts only with this much left")
    parser.add_argument("--static-min-s", type=float, default=None, help="the same for the static-cache row")
    parser.add_argument("--compare-join-ahead", type=int, default=0, metavar="REPEATS",
                        help="only default-flag rows, next batch joined in a thread vs after, REPEATS times each")
    parser.add_argument("--summarize", nargs="*", default=None, metavar="JSON",
                        help="print the targets table of earlier reports and exit")
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    big = (args.shape or "") == "8b"
    defaults = {"shape": "tiny" if cpu else "2b", "sets": ["pope", "docvqa", "distinct"],
                "pope_items": 72 if cpu else (1008 if big else 2016), "docvqa_items": 16 if cpu else (128 if big else 256),
                "distinct_items": 48 if cpu else (1024 if big else 2048),
                "batch_sizes": [8, 32] if cpu else [128, 256, 512], "plain_batch_size": 8 if cpu else 256,
                "max_new_tokens": 4 if cpu else 16, "num_workers": 1 if cpu else min(8, max(1, (os.cpu_count() or 2) - 1)),
                "warmup_items": 8 if cpu else 64, "min_row_s": 5 if cpu else 40, "static_min_s": 5 if cpu else 90}
    fill_defaults(args, defaults)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize is not None:
        reports = [json.loads(Path(path).read_text()) for path in args.summarize]
        print_table(summary_rows(reports), ("ratio", "shape", "value", "target", "met", "vs_2b"))
        return 0
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    report = run(args)
    report["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    for row in report["rows"]:
        row.pop("predictions", None)
    print_table(report["rows"], ("set", "mode", "items", "seconds", "items_per_s", "batch_size", "batches", "busy_s",
                                 "wait_before_first_batch_s", "gpu_idle_share_after_first_batch", "peak_memory_gib"))
    print_table(summary_rows([report]), ("ratio", "shape", "value", "target", "met"))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
