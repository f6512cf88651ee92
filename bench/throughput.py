"""Throughput: the InternVL-style loop vs plain HF batched generate vs our runner, measured in one run.

Single process (`python -m bench.throughput --device cuda|cpu`), on one device, the `realistic` set:

* `internvl_loop`: InternVL's evaluation loop: batch 1, its contiguous shard in dataset order, one
  DataLoader worker preparing the next item, one `generate` per item;
* `plain`: `model.generate` alone over cost-sorted batches made beforehand and already on the GPU
  (no preprocessing timed): the issue's "plain generate at its best batch size" baseline;
* `hf_batched`: what lmms-eval does: items sorted by prompt length, fixed batches, preprocessing in the
  main process between generate calls (no overlap);
* `ours`: `launcher.runner.run_batches` with our adapter (`NativeImageTextAdapter`): batches grouped by
  `adapter.estimate_cost` (`plan_batches`, as a run plans them), DataLoader workers preparing each
  batch in chunks (images, processor, chat template, left padding) while the GPU generates, joined
  into pinned memory;
* `ours, no DataLoader workers`: the same with `num_workers=0` (preprocessing not overlapped);
* `ours+static_cache` (`--sections static_cache`): the same, with `generate(cache_implementation="static")`
  (transformers then compiles the decoding step), through a local adapter subclass: the product is untouched.

The adapter used here is the product's, except that `generate` returns the new token ids as text
("17 803 4 ..."), so that runs can be compared token by token (random ids mostly lie past the small
tokenizer's words). Greedy agreement: each batched mode's ids against the batch-1 loop's, per item.

Multi-GPU (`torchrun --nproc_per_node G -m bench.throughput --worker ...`): every process builds the
model on its GPU and, for each set, runs (1) rank 0 alone over the whole set (one-GPU reference, same
processes), (2) the static schedule (contiguous shards, `plan_batches`), (3) the dynamic schedule
(one cost-sorted batch list, longest first, shrinking tail, batch numbers claimed from the store's
atomic counter by each process's loader: `WorkQueue`, exactly as `evaluation.py` wires it). Each rank's finish time is
measured from a common barrier; the report gives items/s per GPU, scaling over the one-GPU run and the
slowest / fastest finish-time ratio.

Writes JSON (`--out`) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from bench.common import fill_defaults, sync_device
from bench.report import print_table, write_report
from bench.data import BenchTask, SyntheticSet, make_set
from launcher.adapters import NativeImageTextAdapter, _first_device, avoid_per_shape_attention_plans
from launcher.generation import GenerationSettings


class RecordingAdapter(NativeImageTextAdapter):
    """Our adapter, returning the generated token ids as text; `generate_kwargs` add to generate()."""

    def __init__(self, *args: Any, generate_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generate_kwargs = dict(generate_kwargs or {})

    @torch.inference_mode()
    def generate(self, batch, settings: GenerationSettings) -> list[str]:
        inputs = batch.to(_first_device(self.model), self.dtype)
        if self.generate_kwargs:
            output = self.model.generate(**inputs, **settings.generate_kwargs(), **self.generate_kwargs,
                                         pad_token_id=self.tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        else:   # the product's path: our greedy loop unless settings.decode == "generate"
            new_tokens = self._new_tokens(inputs, settings).tolist()
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in new_tokens:
            if eos in row:
                row = row[:row.index(eos)]
            texts.append(" ".join(map(str, row)))
        return texts


def make_adapter(model, processor, synthetic: SyntheticSet, dtype: torch.dtype,
                 generate_kwargs: dict[str, Any] | None = None) -> RecordingAdapter:
    return RecordingAdapter(model, processor, dynamic=synthetic.dynamic, max_num=synthetic.max_num, dtype=dtype,
                            generate_kwargs=generate_kwargs)


def item_costs(adapter, items, prompts) -> list[float]:
    """Every item's cost, in order, as the launcher plans it (`launcher.evaluation.item_costs`)."""
    from launcher.evaluation import item_costs as costs_by_index

    return list(costs_by_index(adapter, items, prompts, range(len(items))).values())


class Workload(NamedTuple):
    """A synthetic set on one model, as every bench runs it: items, prompts, our adapter, item costs."""

    synthetic: SyntheticSet
    items: list[Any]
    prompts: list[str]
    adapter: RecordingAdapter
    costs: list[float]


def make_workload(model, processor, dtype: torch.dtype, num_items: int, set_name: str = "realistic",
                  seed: int = 0) -> Workload:
    """`set_name` (bench/data.py) at the model's tile size, with BenchTask prompts and `estimate_cost` costs."""
    synthetic = make_set(set_name, num_items, int(model.config.vision_config.image_size[0]), seed)
    prompts = [BenchTask().prompt(item) for item in synthetic.items]
    adapter = make_adapter(model, processor, synthetic, dtype)
    return Workload(synthetic, synthetic.items, prompts, adapter, item_costs(adapter, synthetic.items, prompts))


def one_device(name: str) -> tuple[torch.device, torch.dtype]:
    """Where a single-process bench runs (`cuda`: GPU 0, bf16; `cpu`: float32)."""
    return (torch.device("cuda:0"), torch.bfloat16) if name == "cuda" else (torch.device("cpu"), torch.float32)


# ------------------------------------------------------------------------------------------------
# The three loops, each returning {"seconds", "items", "predictions": {id: text}}


class _OneItem(torch.utils.data.Dataset):
    """InternVL's dataset: __getitem__ opens and preprocesses one item (here: our collate of one)."""

    def __init__(self, adapter, items, prompts, indices) -> None:
        self.adapter, self.items, self.prompts, self.indices = adapter, items, prompts, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        from launcher.images import open_image

        index = self.indices[position]
        item = self.items[index]
        images = [open_image(source, item.id) for source in item.images]
        return index, self.adapter.collate([item], [self.prompts[index]], [images])


def internvl_loop(adapter, items, prompts, indices: Sequence[int], settings: GenerationSettings,
                  num_workers: int = 1) -> dict[str, Any]:
    """Batch 1 in dataset order, one DataLoader worker ahead (InternVL's VQA scripts)."""
    loader = torch.utils.data.DataLoader(_OneItem(adapter, items, prompts, indices), batch_size=None,
                                         num_workers=num_workers, pin_memory=torch.cuda.is_available())
    predictions = {}
    sync_device()
    started = time.perf_counter()
    for index, batch in loader:
        predictions[items[index].id] = adapter.generate(batch, settings)[0]
    sync_device()
    return {"seconds": time.perf_counter() - started, "items": len(predictions), "predictions": predictions}


def hf_batched(adapter, items, prompts, indices: Sequence[int], settings: GenerationSettings,
               batch_size: int) -> dict[str, Any]:
    """lmms-eval style: sort by prompt length (longest first), fixed batches, preprocessing in line."""
    from launcher.images import open_image

    ordered = sorted(indices, key=lambda i: (-len(prompts[i]), i))
    predictions = {}
    sync_device()
    started = time.perf_counter()
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        images = [[open_image(source, items[i].id) for source in items[i].images] for i in chunk]
        batch = adapter.collate([items[i] for i in chunk], [prompts[i] for i in chunk], images)
        for index, text in zip(chunk, adapter.generate(batch, settings)):
            predictions[items[index].id] = text
    sync_device()
    return {"seconds": time.perf_counter() - started, "items": len(predictions), "predictions": predictions}


def ours(adapter, items, prompts, batches: list[list[int]], settings: GenerationSettings, num_workers: int,
         *, queue_key: str | None = None, store=None) -> dict[str, Any]:
    """`run_batches`, the product's loop, over `batches` (claimed from the store when `queue_key` is set)."""
    from launcher.journal import Journal, read_journal
    from launcher.runner import StopFlag, run_batches

    with tempfile.TemporaryDirectory() as scratch:
        journal = Journal(Path(scratch) / "journal.jsonl")
        sync_device()
        started = time.perf_counter()
        result = run_batches(task=BenchTask(), items=items, prompts=prompts, batches=batches, adapter=adapter,
                             settings=settings, journal=journal, on_bad_item="error", num_workers=num_workers,
                             pin_memory=torch.cuda.is_available(), queue_key=queue_key, store=store,
                             stop=StopFlag(), on_batch_done=lambda *_: None,
                             set_phase=lambda *_: None)
        sync_device()
        seconds = time.perf_counter() - started
        journal.close()
        rows = list(read_journal(journal.path))
    busy = sum(end - begin for begin, end in result.batch_spans)
    first = result.batch_spans[0][0] - result.started_at if result.batch_spans else None
    after_first = result.seconds - first if first is not None else 0.0
    return {"seconds": seconds, "items": result.items_done, "batches": result.batches,
            "oom_splits": result.oom_splits, "predictions": {row["id"]: row["prediction"] for row in rows},
            # Time the loop waited for the DataLoader: the GPU idles then (first batch included).
            "waiting_for_data_s": round(result.seconds - busy, 3), "joining_chunks_s": round(result.join_seconds, 3),
            "first_batch_ready_s": round(first, 3) if first is not None else None,
            # Between batches after the first one started: what the "< 3% of the run" is about.
            "gpu_idle_share_after_first_batch": round(max(0.0, after_first - busy) / after_first, 4)
            if after_first > 0 else None}


# ------------------------------------------------------------------------------------------------
# Agreement and reporting


def agreement(reference: dict[str, str], other: dict[str, str]) -> dict[str, Any]:
    """Token-level greedy agreement of `other` with `reference` over their common ids."""
    common = sorted(set(reference) & set(other))
    if not common:
        return {"items": 0}
    exact = first = prefix = total = 0
    for key in common:
        a, b = reference[key].split(), other[key].split()
        exact += a == b
        first += bool(a and b and a[0] == b[0])
        shared = 0
        for x, y in zip(a, b):
            if x != y:
                break
            shared += 1
        prefix += shared
        total += max(len(a), 1)
    return {"items": len(common), "exact_sequence": round(exact / len(common), 4),
            "first_token": round(first / len(common), 4), "mean_common_prefix_fraction": round(prefix / total, 4)}


def device_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _row(mode: str, batch_size: int, run: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    waits = {key: run[key] for key in ("waiting_for_data_s", "joining_chunks_s", "first_batch_ready_s",
                                       "gpu_idle_share_after_first_batch") if key in run}
    return {"mode": mode, "batch_size": batch_size, "items": run["items"], "seconds": round(run["seconds"], 3),
            "items_per_s": round(run["items"] / run["seconds"], 2) if run["seconds"] > 0 else None, **waits,
            **(extra or {})}


def _time_left(deadline: float) -> float:
    return deadline - time.monotonic()


# ------------------------------------------------------------------------------------------------
# Single process


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import build_random_internvl

    started = time.monotonic()
    deadline = started + args.budget_s
    device, dtype = one_device(args.device)
    model, processor = build_random_internvl(args.shape, device, dtype)
    print(f"[throughput] built {args.shape}: {model.bench_info}", flush=True)
    synthetic, items, prompts, adapter, costs = make_workload(model, processor, dtype, args.items)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, decode=args.decode)
    # The baselines decode as their tools do: transformers' generate.
    baseline_settings = GenerationSettings(max_new_tokens=args.max_new_tokens, decode="generate")
    everything = list(range(len(items)))
    report: dict[str, Any] = {"kind": "throughput_single", "shape": args.shape, "model": model.bench_info,
                              "environment": device_description(device), "set": synthetic.describe(),
                              "max_new_tokens": args.max_new_tokens, "num_workers": args.num_workers,
                              "mean_cost_tokens": round(sum(costs) / len(costs), 1), "rows": [], "skipped": []}
    from launcher.scheduler import plan_batches

    # Warm-up: kernels, cuBLAS handles, allocator, DataLoader fork.
    warm = everything[:min(len(items), max(args.batch_sizes))]
    ours(adapter, items, prompts, plan_batches(warm, costs, max(args.batch_sizes), 0, 1, False), settings,
         args.num_workers)
    internvl_loop(adapter, items, prompts, everything[:2], baseline_settings)

    sections = args.sections
    reference: dict[str, str] = {}
    if "loop" in sections:
        if device.type == "cuda":   # as InternVL's users run it: default attention backends
            torch.backends.cuda.enable_cudnn_sdp(True)
            default = internvl_loop(adapter, items, prompts, everything[:args.loop_items], baseline_settings)
            report["rows"].append(_row("internvl_loop, default attention backends", 1, default))
            avoid_per_shape_attention_plans()
        baseline = internvl_loop(adapter, items, prompts, everything[:args.loop_items], baseline_settings)
        report["rows"].append(_row("internvl_loop", 1, baseline))
        reference = baseline["predictions"]

    if "plain" in sections:   # the baseline: generate alone, inputs made beforehand and on the GPU
        from bench.profile_generate import premade_batches, timed_generate

        for batch_size in args.plain_batch_sizes:
            made = premade_batches(adapter, items, prompts, plan_batches(everything, costs, batch_size, 0, 1, False),
                                   max(1, args.num_workers))
            on_device = [inputs.to(device, dtype) for inputs in made]
            del made
            # As its users run it (PyTorch's default attention backends, cuDNN's included), then as we do.
            for label, cudnn in (("", True), (", cuDNN SDPA off", False)):
                torch.backends.cuda.enable_cudnn_sdp(cudnn)
                timed_generate(adapter, on_device[:1], settings)
                for repeat in range(args.repeats):
                    plain = timed_generate(adapter, on_device, settings)
                    report["rows"].append({"mode": f"plain generate, pre-made inputs on the GPU{label}",
                                           "batch_size": batch_size, "repeat": repeat, **plain})
            del on_device
        avoid_per_shape_attention_plans()

    if "hf" in sections:
        hf = hf_batched(adapter, items, prompts, everything, baseline_settings, args.hf_batch_size)
        report["rows"].append(_row("hf_batched", args.hf_batch_size, hf,
                                   {"agreement_vs_batch1": agreement(reference, hf["predictions"])}))

    dynamic_cache_run = None
    if "ours" in sections or "static_cache" in sections:
        sizes = args.batch_sizes if "ours" in sections else args.batch_sizes[:1]
        for batch_size in sizes:
            for repeat in range(args.repeats if batch_size == sizes[0] else 1):
                run = ours(adapter, items, prompts, plan_batches(everything, costs, batch_size, 0, 1, False), settings,
                           args.num_workers)
                report["rows"].append(_row("ours", batch_size, run, {
                    "repeat": repeat, "agreement_vs_batch1": agreement(reference, run["predictions"])}))
                if batch_size == sizes[0]:
                    dynamic_cache_run = run

    if "no_workers" in sections:
        batch_size = args.batch_sizes[0]
        run = ours(adapter, items, prompts, plan_batches(everything, costs, batch_size, 0, 1, False), settings, 0)
        report["rows"].append(_row("ours, no DataLoader workers (no overlap)", batch_size, run))

    if "static_cache" in sections:
        batch_size = args.batch_sizes[0]
        if _time_left(deadline) < args.static_cache_min_s:
            report["skipped"].append(f"static_cache: {int(_time_left(deadline))} s left of the budget")
        else:
            static = make_adapter(model, processor, synthetic, dtype, {"cache_implementation": "static"})
            batches = plan_batches(everything, costs, batch_size, 0, 1, False)
            first = ours(static, items, prompts, batches, settings, args.num_workers)
            report["rows"].append(_row("ours+static_cache (first run, incl. compile)", batch_size, first))
            for repeat in range(args.repeats):
                again = ours(static, items, prompts, batches, settings, args.num_workers)
                extra = {"repeat": repeat, "agreement_vs_batch1": agreement(reference, again["predictions"])}
                if dynamic_cache_run is not None:
                    extra["agreement_vs_ours_dynamic_cache"] = agreement(dynamic_cache_run["predictions"],
                                                                         again["predictions"])
                report["rows"].append(_row("ours+static_cache", batch_size, again, extra))
    if device.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    report["seconds_total"] = round(time.monotonic() - started, 1)
    return report


# ------------------------------------------------------------------------------------------------
# torchrun workers: scaling and static vs dynamic


def run_worker(args: argparse.Namespace) -> dict[str, Any] | None:
    import torch.distributed as dist

    from bench.models import build_random_internvl
    from launcher.scheduler import contiguous_shard, plan_batches
    from launcher.topology import connect, detect, disconnect

    topology = detect()
    store = connect(topology, timeout_s=600)
    rank, world = topology.rank, topology.world_size
    device = torch.device("cuda", topology.gpus[0]) if topology.gpus else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, processor = build_random_internvl(args.shape, device, dtype)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, decode=args.decode)
    report: dict[str, Any] = {"kind": "throughput_multi", "shape": args.shape, "world_size": world,
                              "model": model.bench_info, "environment": device_description(device),
                              "max_new_tokens": args.max_new_tokens, "num_workers": args.num_workers,
                              "batch_size": args.batch_sizes[0], "sets": {}}
    batch_size = args.batch_sizes[0]

    def share(phase: str, value: dict[str, Any]) -> list[dict[str, Any]]:
        store.set(f"bench/{phase}/{rank}", json.dumps(value))
        return [json.loads(store.get(f"bench/{phase}/{r}")) for r in range(world)]

    for set_name, num_items in (("realistic", args.items), ("skewed", args.skewed_items)):
        if set_name not in args.sets:
            continue
        synthetic, items, prompts, adapter, costs = make_workload(model, processor, dtype, num_items, set_name)
        everything = list(range(len(items)))
        # Warm-up on every rank (shapes of this set: the most expensive items first).
        warm = plan_batches(everything, costs, batch_size, 0, 1, False)[:1]
        ours(adapter, items, prompts, warm, settings, args.num_workers)
        phases: dict[str, Any] = {}

        dist.barrier()
        if rank == 0 and not args.skip_one_gpu:
            alone = ours(adapter, items, prompts, plan_batches(everything, costs, batch_size, 0, 1, False), settings,
                         args.num_workers)
            phases["one_gpu"] = {"seconds": round(alone["seconds"], 3), "items": alone["items"],
                                 "items_per_s": round(alone["items"] / alone["seconds"], 2)}
        dist.barrier()

        for schedule in ("static", "dynamic"):
            batches = plan_batches(everything, costs, batch_size, rank, world, schedule == "dynamic")
            if schedule == "static":
                queue = {}
            else:
                queue = {"queue_key": f"bench/queue/{set_name}", "store": store}
            shard_cost = sum(costs[i] for batch in batches for i in batch) if schedule == "static" else None
            dist.barrier()
            run = ours(adapter, items, prompts, batches, settings, args.num_workers, **queue)
            per_rank = share(f"{set_name}/{schedule}", {"rank": rank, "seconds": run["seconds"], "items": run["items"],
                                                       "batches": run["batches"], "shard_cost_tokens": shard_cost})
            slowest = max(entry["seconds"] for entry in per_rank)
            fastest = min(entry["seconds"] for entry in per_rank)
            total_items = sum(entry["items"] for entry in per_rank)
            phases[schedule] = {
                "per_rank": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()} for e in per_rank],
                "items": total_items, "wall_seconds": round(slowest, 3),
                "items_per_s": round(total_items / slowest, 2),
                "items_per_s_per_gpu": round(total_items / slowest / world, 2),
                "slowest_over_fastest": round(slowest / fastest, 3)}
            if "one_gpu" in phases:
                phases[schedule]["speedup_over_one_gpu"] = round(phases["one_gpu"]["seconds"] / slowest, 3)
        report["sets"][set_name] = {"set": synthetic.describe(), "phases": phases,
                                    "mean_cost_tokens": round(sum(costs) / len(costs), 1),
                                    "total_cost_tokens": round(sum(costs)),
                                    "static_shard_costs": [round(sum(costs[i] for i in contiguous_shard(len(items), r, world)))
                                                           for r in range(world)]}
        dist.barrier()
    disconnect()
    return report if rank == 0 else None


def _table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    if report["kind"] == "throughput_single":
        rows = []
        for row in report["rows"]:
            agree = row.get("agreement_vs_batch1") or {}
            rows.append({**row, "exact_vs_b1": agree.get("exact_sequence", ""),
                         "first_tok_vs_b1": agree.get("first_token", "")})
        return rows
    rows = []
    for set_name, entry in report["sets"].items():
        for phase, values in entry["phases"].items():
            rows.append({"set": set_name, "phase": phase, "items": values["items"],
                         "wall_s": values.get("wall_seconds", values.get("seconds")),
                         "items_per_s": values["items_per_s"],
                         "per_gpu": values.get("items_per_s_per_gpu", values["items_per_s"]),
                         "slowest/fastest": values.get("slowest_over_fastest", ""),
                         "speedup": values.get("speedup_over_one_gpu", "")})
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shape", default=None, help="tiny, 2b, 8b (default: 2b on cuda, tiny on cpu)")
    parser.add_argument("--worker", action="store_true", help="run as a torchrun worker (scaling, schedules)")
    parser.add_argument("--items", type=int, default=None, help="items of the realistic set")
    parser.add_argument("--skewed-items", type=int, default=None)
    parser.add_argument("--sets", type=lambda s: s.split(","), default=["realistic", "skewed"],
                        help="workers: comma list of realistic, skewed")
    parser.add_argument("--skip-one-gpu", action="store_true",
                        help="workers: no rank-0-alone reference run (taken from another run of the session)")
    parser.add_argument("--loop-items", type=int, default=None, help="items the batch-1 loop runs")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="ours: first one repeated --repeats times and used by the workers")
    parser.add_argument("--hf-batch-size", type=int, default=None)
    parser.add_argument("--plain-batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="plain generate on pre-made inputs (section plain)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--decode", choices=("auto", "generate"), default="auto",
                        help="ours: the product's --decode (the baselines always use generate)")
    parser.add_argument("--sections", default="loop,plain,hf,ours,no_workers",
                        help="single process: comma list of loop, plain, hf, ours, no_workers, static_cache")
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip optional variants past this")
    parser.add_argument("--static-cache-min-s", type=float, default=120.0)
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = {"shape": "tiny" if cpu else "2b", "items": 24 if cpu else 1024, "skewed_items": 24 if cpu else 512,
                "loop_items": 6 if cpu else 48, "batch_sizes": [8] if cpu else [128, 64, 256],
                "hf_batch_size": 8 if cpu else 128, "plain_batch_sizes": [8] if cpu else [128, 256],
                "max_new_tokens": 4 if cpu else 16,
                "num_workers": 1 if cpu else 4}
    fill_defaults(args, defaults)
    args.sections = [v for v in args.sections.split(",") if v]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    report = run_worker(args) if args.worker else run_single(args)
    if report is None:
        return 0
    report["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    for row in report.get("rows", []):
        row.pop("predictions", None)
    columns = (("mode", "batch_size", "items", "seconds", "items_per_s", "waiting_for_data_s", "exact_vs_b1",
                "first_tok_vs_b1")
               if report["kind"] == "throughput_single" else
               ("set", "phase", "items", "wall_s", "items_per_s", "per_gpu", "slowest/fastest", "speedup"))
    print_table(_table_rows(report), columns)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
