"""Split mode: one GPU vs a model layer-split over GPUs in one process vs independent replicas; 8/4-bit.

Modes (`python -m bench.split_mode --mode M`), all on the 8B shape unless `--shape` says otherwise,
all measured through our runner (`run_batches` + the native adapter, as `bench.throughput`):

* `single`: the model on one GPU, for each of `--precisions` (bf16, 8bit, 4bit): items/s, weight bytes
  and peak memory.
* `replica`: one of R independent replicas (start one process per GPU with CUDA_VISIBLE_DEVICES); each
  waits for the others at a file barrier, then runs its contiguous share; replica 0 collects every
  replica's result and reports the combined items/s (the data-parallel layout we default to).
* `split`: one process over every visible GPU (InternVL's `--auto`, our `--gpus-per-model K`): the device
  map comes from the product's planner (`launcher.loading.plan_multi_gpu_map`, the same call
  `load_model` makes: a meta skeleton of the checkpoint's config) and, for bf16, also from InternVL's
  rule (`--device-map internvl`); for each precision: items/s and memory per GPU. Predictions are
  compared with the one-GPU run of the same precision (the weights are identical: see bench.models).
  Before that, the product's own loading path is checked on the GPUs with a tiny saved checkpoint:
  `load_model` with `--load-in-8bit` / `--load-in-4bit`, on one GPU and split over all of them.
* `big`: a model too large for one GPU (`--shape 38b`): `max_memory` per GPU capped below the model's
  size (`--cap-fraction` of its bytes), planned by the product's planner, built on the GPUs, then it
  generates: its outputs must be finite, deterministic and the same at batch 1 and batch B.

Quantization: the BitsAndBytesConfig is the product's (`launcher.loading.quantization_config`), applied
to the random-weight model in code (`bench.models.quantize_linears`: bitsandbytes' Linear8bitLt /
Linear4bit, exactly the modules `from_pretrained(quantization_config=...)` installs), since saving and
reloading a 16 GB checkpoint would cost more device time than the measurement.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from bench.common import fill_defaults
from bench.report import print_table, write_report
from bench.throughput import agreement, device_description, make_workload, ours
from launcher.generation import GenerationSettings

PRECISION_DTYPES = {"bf16": torch.bfloat16, "8bit": torch.bfloat16, "4bit": torch.bfloat16}


def _devices(args: argparse.Namespace) -> list[torch.device]:
    if args.device == "cpu":
        return [torch.device("cpu")]
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def _dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.float32 if args.device == "cpu" else torch.bfloat16


def _quantization(precision: str, dtype: torch.dtype) -> Any:
    from launcher.loading import quantization_config

    if precision == "bf16":
        return None
    flags = SimpleNamespace(load_in_8bit=precision == "8bit", load_in_4bit=precision == "4bit")
    config, _ = quantization_config(flags, dtype)
    return config


def _memory(devices: Sequence[torch.device]) -> dict[str, float]:
    if devices[0].type != "cuda":
        return {}
    return {str(d): round(torch.cuda.max_memory_allocated(d) / 2**30, 2) for d in devices}


def _reset_memory(devices: Sequence[torch.device]) -> None:
    gc.collect()
    if devices[0].type == "cuda":
        torch.cuda.empty_cache()
        for d in devices:
            # The caching allocator of a device exists only after its first allocation: before that,
            # reset_peak_memory_stats fails with "Invalid device argument" (seen on torch 2.11).
            torch.empty(1, device=d)
            torch.cuda.reset_peak_memory_stats(d)


def _gib(values: dict[str, int]) -> dict[str, float]:
    return {k: round(v / 2**30, 2) for k, v in values.items()}


def _plan(shape: str, gpu_indices: list[int], *, method: str, dtype: torch.dtype, batch_size: int,
          max_new_tokens: int, quantized: bool, max_memory: dict[int, int] | None) -> dict[str, Any]:
    """The product's device map for `shape` over `gpu_indices` (a config-only checkpoint folder)."""
    from bench.models import build_config
    from launcher.loading import CheckpointInfo, plan_multi_gpu_map

    with tempfile.TemporaryDirectory() as folder:
        config = build_config(shape)
        config.save_pretrained(folder)
        info = CheckpointInfo(path=Path(folder), config=config.to_dict(), model_type="internvl", auto_map={},
                              safetensors=(), pickle_weights=())
        return plan_multi_gpu_map(info, [torch.device("cuda", i) for i in gpu_indices], method=method, dtype=dtype,
                                  batch_size=batch_size, max_new_tokens=max_new_tokens, tiles_per_item=1,
                                  max_memory=max_memory, quantized=quantized)


def _on_devices(device_map: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """On the CPU check, the planned GPU indices all become "cpu"."""
    if args.device == "cpu":
        return {name: "cpu" for name in device_map}
    return device_map


def _layers_per_device(device_map: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, device in device_map.items():
        if ".layers." in name:
            counts[str(device)] = counts.get(str(device), 0) + 1
    return counts


def measure(model, processor, args: argparse.Namespace, num_items: int, indices: Sequence[int] | None = None,
            warm: bool = True) -> dict[str, Any]:
    """Warm up, then run `run_batches` over the realistic set (or `indices` of it); items/s and predictions."""
    from launcher.scheduler import plan_batches

    _, items, prompts, adapter, costs = make_workload(model, processor, _dtype(args), num_items, seed=args.seed)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    indices = list(range(len(items))) if indices is None else list(indices)
    batches = plan_batches(indices, costs, args.batch_size, 0, 1, False)   # as a one-process run plans them
    if warm:
        ours(adapter, items, prompts, batches[:1], settings, args.num_workers)
    run = ours(adapter, items, prompts, batches, settings, args.num_workers)
    return {"items": run["items"], "seconds": round(run["seconds"], 3),
            "items_per_s": round(run["items"] / run["seconds"], 2), "predictions": run["predictions"]}


def _free(model) -> None:
    """Collect garbage and return cached blocks (the caller must drop its own references first)."""
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _save_predictions(args: argparse.Namespace, key: str, predictions: dict[str, str]) -> None:
    folder = Path(args.scratch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"predictions-{key}.json").write_text(json.dumps(predictions))


def _load_predictions(args: argparse.Namespace, key: str) -> dict[str, str] | None:
    path = Path(args.scratch) / f"predictions-{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------------


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import build_random_internvl

    devices = _devices(args)[:1]
    dtype = _dtype(args)
    rows = []
    for precision in args.precisions:
        _reset_memory(devices)
        model, processor = build_random_internvl(args.shape, devices[0], dtype,
                                                 quantization_config=_quantization(precision, dtype))
        build_peak = _memory(devices)
        _reset_memory(devices)
        items = args.items if precision == "bf16" else args.quant_items
        result = measure(model, processor, args, items)
        _save_predictions(args, f"single-{precision}", result.pop("predictions"))
        rows.append({"layout": "one GPU", "precision": precision, **result,
                     "weights_gib": _gib(model.bench_info["weight_bytes_per_device"]),
                     "peak_gib": _memory(devices), "build_peak_gib": build_peak,
                     "build_s": model.bench_info["build_seconds"]})
        print(f"[split_mode] {rows[-1]}", flush=True)
        del model, processor  # before the next build: its peak must not include this model
        _free(None)
    reference = _load_predictions(args, "single-bf16")
    for row in rows:
        other = _load_predictions(args, f"single-{row['precision']}")
        if reference and other and row["precision"] != "bf16":
            row["agreement_vs_bf16"] = agreement(reference, other)
    return {"kind": "split_single", "rows": rows}


def run_replica(args: argparse.Namespace) -> dict[str, Any] | None:
    from bench.models import build_random_internvl
    from launcher.scheduler import contiguous_shard

    devices = _devices(args)[:1]
    dtype = _dtype(args)
    model, processor = build_random_internvl(args.shape, devices[0], dtype)
    barrier = Path(args.scratch) / "replicas"
    barrier.mkdir(parents=True, exist_ok=True)
    shard = list(contiguous_shard(args.items, args.replica_index, args.replicas))
    # Warm up before the barrier, so that every replica starts its measured run together.
    measure(model, processor, args, args.items, indices=shard[:args.batch_size], warm=False)
    (barrier / f"ready-{args.replica_index}").touch()
    deadline = time.monotonic() + 300
    while len(list(barrier.glob("ready-*"))) < args.replicas:
        if time.monotonic() > deadline:
            raise TimeoutError("the other replicas never became ready")
        time.sleep(0.05)
    started = time.time()
    result = measure(model, processor, args, args.items, indices=shard, warm=False)
    finished = time.time()
    result.pop("predictions")
    mine = {"replica": args.replica_index, "device": str(devices[0]), "gpu": device_description(devices[0]).get("gpu"),
            **result, "started": started, "finished": finished, "peak_gib": _memory(devices)}
    (barrier / f"result-{args.replica_index}.json").write_text(json.dumps(mine))
    if args.replica_index != 0:
        return None
    while len(list(barrier.glob("result-*.json"))) < args.replicas:
        if time.monotonic() > deadline + 300:
            raise TimeoutError("the other replicas never reported")
        time.sleep(0.05)
    replicas = [json.loads((barrier / f"result-{i}.json").read_text()) for i in range(args.replicas)]
    wall = max(r["finished"] for r in replicas) - min(r["started"] for r in replicas)
    total = sum(r["items"] for r in replicas)
    return {"kind": "split_replicas", "replicas": replicas,
            "rows": [{"layout": f"{args.replicas} replicas", "precision": "bf16", "items": total,
                      "seconds": round(wall, 3), "items_per_s": round(total / wall, 2),
                      "peak_gib": {f"replica{r['replica']}": list(r["peak_gib"].values()) for r in replicas}}]}


def product_loading_check(args: argparse.Namespace, devices: list[torch.device]) -> list[dict[str, Any]]:
    """`launcher.loading.load_model` with --load-in-8bit / --load-in-4bit on a tiny saved checkpoint."""
    from launcher.loading import load_model
    from launcher.tiny_models import build_native_internvl

    checks = []
    with tempfile.TemporaryDirectory() as folder:
        build_native_internvl(folder)
        layouts = [devices[:1]] + ([devices] if len(devices) > 1 else [])
        for precision in ("8bit", "4bit"):
            for layout in layouts:
                flags = SimpleNamespace(checkpoint=folder, auto=False, load_in_8bit=precision == "8bit",
                                        load_in_4bit=precision == "4bit", batch_size=4, max_new_tokens=4)
                entry: dict[str, Any] = {"precision": precision, "devices": [str(d) for d in layout]}
                try:
                    loaded = load_model(flags, layout)
                    linear_types = sorted({type(m).__name__ for m in loaded.model.modules() if "Linear" in type(m).__name__})
                    entry.update(ok=True, linear_types=linear_types,
                                 devices_used=sorted({str(v) for v in loaded.device_map.values()}))
                    ids = loaded.tokenizer(["what colour is the circle"], return_tensors="pt")
                    first = next(loaded.model.parameters()).device
                    out = loaded.model.generate(**{k: v.to(first) for k, v in ids.items()}, max_new_tokens=4,
                                                do_sample=False)
                    entry["generated_tokens"] = int(out.shape[1] - ids["input_ids"].shape[1])
                    del loaded
                except Exception as error:  # reported, not hidden: the JSON says which path failed
                    entry.update(ok=False, error=f"{type(error).__name__}: {error}"[:400])
                checks.append(entry)
                gc.collect()
    return checks


def run_split(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import build_random_internvl

    devices = _devices(args)
    gpu_indices = list(range(max(2, len(devices)))) if args.device == "cpu" else [d.index for d in devices]
    dtype = _dtype(args)
    report: dict[str, Any] = {"kind": "split_split", "rows": []}
    if args.device == "cuda" and "product_check" not in args.skip:
        report["product_loading_check"] = product_loading_check(args, devices)
        print(f"[split_mode] product loading check: {report['product_loading_check']}", flush=True)
    methods = [m for m in args.methods if not (m == "internvl" and "internvl" in args.skip)]
    cases = ([(m, "bf16") for m in methods] if "bf16" in args.precisions else []) + \
        [("planner", p) for p in args.precisions if p != "bf16"]
    for method, precision in cases:
        _reset_memory(devices)
        caps = {i: 80 * 2**30 for i in gpu_indices} if args.device == "cpu" else None
        device_map = _plan(args.shape, gpu_indices, method=method, dtype=dtype, batch_size=args.batch_size,
                           max_new_tokens=args.max_new_tokens, quantized=precision != "bf16", max_memory=caps)
        model, processor = build_random_internvl(args.shape, devices[0], dtype,
                                                 device_map=_on_devices(device_map, args),
                                                 quantization_config=_quantization(precision, dtype))
        build_peak = _memory(devices)
        _reset_memory(devices)
        items = args.items if precision == "bf16" else args.quant_items
        result = measure(model, processor, args, items)
        predictions = result.pop("predictions")
        row = {"layout": f"split over {len(gpu_indices)} ({method})", "precision": precision, **result,
               "layers_per_gpu": _layers_per_device(device_map),
               "weights_gib": _gib(model.bench_info["weight_bytes_per_device"]), "peak_gib": _memory(devices),
               "build_peak_gib": build_peak, "build_s": model.bench_info["build_seconds"]}
        reference = _load_predictions(args, f"single-{precision}")
        if reference:
            row["agreement_vs_one_gpu"] = agreement(reference, predictions)
        report["rows"].append(row)
        print(f"[split_mode] {row}", flush=True)
        del model, processor
        _free(None)
    return report


def run_big(args: argparse.Namespace) -> dict[str, Any]:
    """A model larger than the cap of one GPU, planned and run over all GPUs (module docstring)."""
    from bench.models import build_random_internvl, parameter_count

    devices = _devices(args)
    gpu_indices = list(range(max(2, len(devices)))) if args.device == "cpu" else [d.index for d in devices]
    dtype = _dtype(args)
    model_bytes = parameter_count(args.shape) * torch.tensor([], dtype=dtype).element_size()
    # On the CPU check the GPUs are imaginary: plan with room to spare (the planner's CUDA overhead alone
    # is larger than the tiny model).
    cap = int(model_bytes * args.cap_fraction) if args.device == "cuda" else 80 * 2**30
    _reset_memory(devices)
    device_map = _plan(args.shape, gpu_indices, method="planner", dtype=dtype, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, quantized=False, max_memory={i: cap for i in gpu_indices})
    model, processor = build_random_internvl(args.shape, devices[0], dtype, device_map=_on_devices(device_map, args))
    batched = measure(model, processor, args, args.items)
    repeat = measure(model, processor, args, args.items, warm=False)
    args_one = SimpleNamespace(**{**vars(args), "batch_size": 1})
    single = measure(model, processor, args_one, min(args.items, args.big_batch1_items), warm=False)
    # Finite logits on the first step of a real batch (a NaN would make greedy ids look plausible).
    _, items, prompts, adapter, _ = make_workload(model, processor, dtype, 2, seed=args.seed)
    from launcher.images import open_image

    batch = adapter.collate(items, prompts, [[open_image(s, item.id) for s in item.images] for item in items])
    with torch.inference_mode():
        first = next(iter(model.parameters())).device
        logits = model(**batch.to(first, dtype)).logits[:, -1]
    row = {"layout": f"{args.shape} split over {len(gpu_indices)}, max_memory {cap / 2**30:.1f} GiB per GPU",
           "precision": "bf16", "items": batched["items"], "seconds": batched["seconds"],
           "items_per_s": batched["items_per_s"], "model_gib": round(model_bytes / 2**30, 1),
           "layers_per_gpu": _layers_per_device(device_map),
           "weights_gib": _gib(model.bench_info["weight_bytes_per_device"]), "peak_gib": _memory(devices),
           "build_s": model.bench_info["build_seconds"],
           "finite_logits": bool(torch.isfinite(logits.float()).all()),
           "deterministic_repeat": agreement(batched["predictions"], repeat["predictions"]),
           "agreement_batch1_vs_batch": agreement(single["predictions"], batched["predictions"])}
    print(f"[split_mode] {row}", flush=True)
    return {"kind": "split_big", "rows": [row]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--mode", choices=("single", "replica", "split", "big"), required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shape", default=None, help="default: 8b (38b for --mode big); tiny on cpu")
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=None, help="bf16,8bit,4bit")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--quant-items", type=int, default=None, help="items for 8bit/4bit runs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--replica-index", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cap-fraction", type=float, default=0.6, help="big: max_memory per GPU / model bytes")
    parser.add_argument("--big-batch1-items", type=int, default=4)
    parser.add_argument("--skip", type=lambda s: s.split(","), default=[], help="product_check,internvl")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["planner", "internvl"],
                        help="split: bf16 device maps to measure, in this order (planner, internvl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "bench_split"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = {"shape": "tiny" if cpu else ("38b" if args.mode == "big" else "8b"),
                "precisions": ["bf16", "8bit", "4bit"], "items": 12 if cpu else (32 if args.mode == "big" else 256),
                "quant_items": 8 if cpu else 64, "batch_size": 4 if cpu else (8 if args.mode == "big" else 32),
                "max_new_tokens": 4 if cpu else 16, "num_workers": 1 if cpu else 2}
    fill_defaults(args, defaults)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    runner = {"single": run_single, "replica": run_replica, "split": run_split, "big": run_big}[args.mode]
    report = runner(args)
    if report is None:
        return 0
    devices = _devices(args)
    report.update(mode=args.mode, shape=args.shape, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                  num_workers=args.num_workers, environment=device_description(devices[0]),
                  command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    print_table(report["rows"], ("layout", "precision", "items", "seconds", "items_per_s", "peak_gib"))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
