"""Where one GPU's time goes: plain `generate` on pre-made inputs, split into vision / prefill / decode.

`python -m bench.profile_generate --device cuda [--batch-sizes 64,128,256] [--out F.json]`

On the `realistic` set (bench/data.py) and the 2B shape (bench/models.py), one process, one GPU:

1. CPU preprocessing rate: our `Preprocessor` (open images, processor, chat template, tokenisation)
   over one batch in the main process, one thread: ms per item (what each DataLoader worker delivers);
2. plain `model.generate` on batches made beforehand and already on the GPU, cost-sorted as ours: the
   baseline the issue names ("plain generate at its best batch size"), items/s per batch size;
3. per batch, CUDA-event spans from forward hooks: the vision tower, the language model's first call
   (prefill) and its later calls (decode steps); the rest of `generate`'s wall time is "other" (logits
   processing, stopping checks, host syncs, Python). FLOPs per phase (2 x parameters x tokens, plus
   attention) give achieved TFLOP/s, and the floor (all phases at --peak-tflops) in items/s;
4. the same with `cache_implementation="static"` (compiled decode) at the largest batch size;
5. `torch.profiler` over one batch at the largest size: the top CUDA kernels and the launch count,
   written next to the JSON as `<out>.kernels.txt`.

`--device cpu` runs the same with the tiny model (a check of this script, not a measurement).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import fill_defaults, sync_device
from bench.report import print_table, write_report
from bench.throughput import device_description, make_adapter, make_workload, one_device


class PhaseTimer:
    """Spans of the vision tower and of every language-model call, by CUDA events (wall clock on CPU)."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: list[tuple[str, Any, Any]] = []
        self._open: dict[str, Any] = {}
        self.language_calls = 0
        inner = model.model
        self.handles = [
            inner.vision_tower.register_forward_pre_hook(lambda *_: self._start("vision")),
            inner.vision_tower.register_forward_hook(lambda *_: self._stop("vision")),
            inner.language_model.register_forward_pre_hook(lambda *_: self._start_language()),
            inner.language_model.register_forward_hook(lambda *_: self._stop_language()),
        ]

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, phase: str) -> None:
        self._open[phase] = self._mark()

    def _stop(self, phase: str) -> None:
        self.spans.append((phase, self._open.pop(phase), self._mark()))

    def _start_language(self) -> None:
        self._start("prefill" if self.language_calls == 0 else "decode")

    def _stop_language(self) -> None:
        self._stop("prefill" if self.language_calls == 0 else "decode")
        self.language_calls += 1

    def begin(self) -> None:
        self.language_calls = 0

    def totals_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for phase, start, end in self.spans:
            elapsed = start.elapsed_time(end) if self.cuda else (end - start) * 1000
            totals[phase] = totals.get(phase, 0.0) + elapsed
        totals["decode_steps"] = sum(1 for phase, *_ in self.spans if phase == "decode")
        self.spans.clear()
        return totals

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def flop_model(model: Any) -> dict[str, float]:
    """Parameter counts that set the FLOPs of each phase (2 x parameters x tokens + attention)."""
    inner = model.model
    vision = inner.vision_tower
    vision_config = model.config.vision_config
    text_config = model.config.text_config
    embed = inner.language_model.get_input_embeddings().weight.numel()
    language = sum(p.numel() for p in inner.language_model.parameters())
    image_size, patch = _first(vision_config.image_size), _first(vision_config.patch_size)
    grid = image_size // patch
    return {
        "vision_params": float(sum(p.numel() for p in vision.parameters())),
        "projector_params": float(sum(p.numel() for p in inner.multi_modal_projector.parameters())),
        "language_params_no_embed": float(language - embed),
        "head_params": float(model.lm_head.weight.numel()),
        "vision_tokens_per_tile": float(grid ** 2 + 1),
        "vision_layers": float(vision_config.num_hidden_layers), "vision_width": float(vision_config.hidden_size),
        "text_layers": float(text_config.num_hidden_layers),
        "text_q_width": float(text_config.num_attention_heads * (text_config.hidden_size
                                                                 // text_config.num_attention_heads)),
        "image_tokens_per_tile": float(int(grid * model.config.downsample_ratio) ** 2),
    }


def _first(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def batch_flops(counts: dict[str, float], batch: dict[str, torch.Tensor], new_tokens: int) -> dict[str, float]:
    """FLOPs of one batch's phases, counting padded positions (what the GPU executes)."""
    rows, length = batch["input_ids"].shape
    tiles = batch["pixel_values"].shape[0] if "pixel_values" in batch else 0
    t = counts["vision_tokens_per_tile"]
    vision = tiles * (2 * counts["vision_params"] * t + 4 * counts["vision_layers"] * t * t * counts["vision_width"])
    vision += tiles * 2 * counts["projector_params"] * counts["image_tokens_per_tile"]
    prefill = rows * (2 * counts["language_params_no_embed"] * length
                      + 2 * counts["text_layers"] * length * length * counts["text_q_width"]
                      + 2 * counts["head_params"])
    context = length + new_tokens / 2
    decode = rows * (new_tokens - 1) * (2 * (counts["language_params_no_embed"] + counts["head_params"])
                                        + 4 * counts["text_layers"] * context * counts["text_q_width"])
    return {"vision": vision, "prefill": prefill, "decode": decode}


def premade_batches(adapter, items, prompts, batches: list[list[int]], num_workers: int) -> list[Any]:
    """Collate `batches` with DataLoader workers (not timed): the inputs plain `generate` starts from."""
    from launcher.runner import Preprocessor

    prepare = Preprocessor(items, prompts, adapter, "error")

    class _Batches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, number: int):
            return prepare(number, batches[number]).inputs

    loader = torch.utils.data.DataLoader(_Batches(), batch_size=None, num_workers=num_workers)
    return list(loader)


def timed_generate(adapter, on_device: list[dict[str, torch.Tensor]], settings,
                   counts: dict[str, float] | None = None) -> dict[str, Any]:
    """Plain `generate` over batches already on the device; per-phase spans and FLOPs when `counts` is given."""
    timer = PhaseTimer(adapter.model, on_device[0]["input_ids"].device) if counts is not None else None
    try:
        return _timed_generate(adapter, on_device, settings, timer, counts)
    finally:
        if timer is not None:
            timer.remove()


def _timed_generate(adapter, on_device: list[dict[str, torch.Tensor]], settings, timer: PhaseTimer | None,
                    counts: dict[str, float] | None) -> dict[str, Any]:
    kwargs = {**settings.generate_kwargs(), **adapter.generate_kwargs, "pad_token_id": adapter.tokenizer.pad_token_id}
    phases = {"vision": 0.0, "prefill": 0.0, "decode": 0.0, "decode_steps": 0}
    flops = {"vision": 0.0, "prefill": 0.0, "decode": 0.0}
    walls = []
    sync_device()
    started = time.perf_counter()
    for inputs in on_device:
        if timer is not None:
            timer.begin()
        begun = time.perf_counter()
        with torch.inference_mode():
            adapter.model.generate(**inputs, **kwargs)
        sync_device()
        walls.append(time.perf_counter() - begun)
        if timer is not None:
            for phase, value in timer.totals_ms().items():
                phases[phase] += value
        if counts is not None:
            for phase, value in batch_flops(counts, inputs, settings.max_new_tokens).items():
                flops[phase] += value
    seconds = time.perf_counter() - started
    items = sum(int(inputs["input_ids"].shape[0]) for inputs in on_device)
    result: dict[str, Any] = {"items": items, "seconds": round(seconds, 3), "items_per_s": round(items / seconds, 2),
                              "batches": len(on_device)}
    if timer is not None:
        wall_ms = sum(walls) * 1000
        other = wall_ms - phases["vision"] - phases["prefill"] - phases["decode"]
        result["ms"] = {"vision": round(phases["vision"], 1), "prefill_language": round(phases["prefill"], 1),
                        "decode": round(phases["decode"], 1), "other": round(other, 1), "wall": round(wall_ms, 1)}
        steps = max(1, phases["decode_steps"])
        result["decode_ms_per_step"] = round(phases["decode"] / steps, 2)
        result["share"] = {k: round(v / wall_ms, 3) for k, v in result["ms"].items() if k != "wall"}
        result["tflops_achieved"] = {
            phase: round(flops[phase] / (ms / 1000) / 1e12, 1) if ms > 0 else None
            for phase, ms in (("vision", phases["vision"]), ("prefill", phases["prefill"]),
                              ("decode", phases["decode"]))}
        result["tflop_per_item"] = sum(flops.values()) / items / 1e12
    return result


def kernel_profile(adapter, inputs: dict[str, torch.Tensor], settings, path: Path | None) -> dict[str, Any]:
    """torch.profiler over one generate: top kernels by device time, launches, CPU vs device totals."""
    from torch.profiler import ProfilerActivity, profile

    kwargs = {**settings.generate_kwargs(), "pad_token_id": adapter.tokenizer.pad_token_id}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof, torch.inference_mode():
        adapter.model.generate(**inputs, **kwargs)
        sync_device()
    averages = prof.key_averages()
    sort_key = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = averages.table(sort_by=sort_key, row_limit=30)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table + "\n")
    kernels = [event for event in prof.events() if getattr(event, "device_type", None) is not None
               and str(event.device_type).endswith("CUDA")]
    device_us = sum(getattr(event, "device_time", 0.0) or 0.0 for event in kernels)
    return {"kernel_launches": len(kernels), "device_busy_ms": round(device_us / 1000, 1),
            "table_file": str(path) if path else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import build_random_internvl
    from launcher.generation import GenerationSettings
    from launcher.runner import Preprocessor
    from launcher.scheduler import plan_batches

    device, dtype = one_device(args.device)
    model, processor = build_random_internvl(args.shape, device, dtype)
    synthetic, items, prompts, adapter, costs = make_workload(model, processor, dtype, args.items)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    everything = list(range(len(items)))
    counts = flop_model(model)
    report: dict[str, Any] = {"kind": "profile_generate", "shape": args.shape, "model": model.bench_info,
                              "environment": device_description(device), "set": synthetic.describe(),
                              "max_new_tokens": args.max_new_tokens, "adapter": adapter.describe(),
                              "flop_counts": counts, "peak_tflops_assumed": args.peak_tflops, "rows": []}

    # 1. CPU preprocessing rate in this process, one thread (what one DataLoader worker delivers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    prepare = Preprocessor(items, prompts, adapter, "error")
    sample = everything[:min(len(items), args.collate_items)]
    prepare(0, sample[:4])
    begun = time.perf_counter()
    prepared = prepare(0, sample)
    collate_s = time.perf_counter() - begun
    torch.set_num_threads(threads)
    report["collate_ms_per_item_one_thread"] = round(collate_s / len(sample) * 1000, 2)
    report["collated_tensors"] = {k: [list(v.shape), str(v.dtype)] for k, v in prepared.inputs.tensors.items()}
    print(f"[profile] collate: {report['collate_ms_per_item_one_thread']} ms/item, one thread", flush=True)

    largest = max(args.batch_sizes)
    largest_on_device = None
    for batch_size in args.batch_sizes:
        batches = plan_batches(everything, costs, batch_size, 0, 1, False)   # as a one-process run plans them
        made = premade_batches(adapter, items, prompts, batches, args.num_workers)
        on_device = [inputs.to(device, dtype) for inputs in made]
        del made
        timed_generate(adapter, on_device[:1], settings)          # warm-up of these shapes
        plain = timed_generate(adapter, on_device, settings)
        profiled = timed_generate(adapter, on_device, settings, counts)
        report["rows"].append({"mode": "plain generate (pre-made inputs on the GPU)", "batch_size": batch_size,
                               **plain})
        report["rows"].append({"mode": "same, with phase hooks", "batch_size": batch_size, **profiled})
        print(f"[profile] batch {batch_size}: {plain['items_per_s']} items/s; phases {profiled.get('ms')}",
              flush=True)
        if batch_size == largest:
            largest_on_device = on_device

    floor_flop = None
    for row in report["rows"]:
        if "tflop_per_item" in row and row["batch_size"] == largest:
            floor_flop = row["tflop_per_item"]
    if floor_flop:
        report["floor_items_per_s_at_peak"] = round(args.peak_tflops / floor_flop, 1)

    if largest_on_device is not None and "static" in args.sections:
        static = make_adapter(model, processor, synthetic, dtype, {"cache_implementation": "static"})
        begun = time.perf_counter()
        timed_generate(static, largest_on_device[:1], settings)
        compile_s = time.perf_counter() - begun
        timed_generate(static, largest_on_device[-1:], settings)   # the short last batch's shape
        again = timed_generate(static, largest_on_device, settings)
        phased = timed_generate(static, largest_on_device, settings, counts)
        report["rows"].append({"mode": "plain generate + static cache (compiled decode)", "batch_size": largest,
                               "first_call_s": round(compile_s, 1), **again})
        report["rows"].append({"mode": "same, with phase hooks", "batch_size": largest, **phased})
        print(f"[profile] static cache, batch {largest}: {again['items_per_s']} items/s "
              f"(first call {compile_s:.1f} s); phases {phased.get('ms')}", flush=True)

    if largest_on_device is not None and "kernels" in args.sections:
        path = Path(args.out).with_suffix(".kernels.txt") if args.out else None
        report["kernel_profile"] = kernel_profile(adapter, largest_on_device[0], settings, path)
    if device.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shape", default=None, help="default: 2b on cuda, tiny on cpu")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None, help="workers that make the batches (untimed)")
    parser.add_argument("--collate-items", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="dense bf16 TFLOP/s a GPU sustains on large matmuls (ENVIRONMENT.md: 790 on H200)")
    parser.add_argument("--sections", default="static,kernels", help="comma list of: static, kernels")
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = {"shape": "tiny" if cpu else "2b", "items": 24 if cpu else 1024,
                "batch_sizes": [4, 8] if cpu else [64, 128, 256], "max_new_tokens": 4 if cpu else 16,
                "num_workers": 1 if cpu else 8}
    fill_defaults(args, defaults)
    args.sections = [v for v in args.sections.split(",") if v]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    report = run(args)
    report["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = []
    for row in report["rows"]:
        ms = row.get("ms") or {}
        rows.append({"mode": row["mode"], "batch": row["batch_size"], "items/s": row["items_per_s"],
                     "vision_ms": ms.get("vision", ""), "prefill_ms": ms.get("prefill_language", ""),
                     "decode_ms": ms.get("decode", ""), "other_ms": ms.get("other", ""),
                     "ms/step": row.get("decode_ms_per_step", ""),
                     "TFLOP/s v/p/d": "/".join(str(v) for v in (row.get("tflops_achieved") or {}).values())})
    print_table(rows, ("mode", "batch", "items/s", "vision_ms", "prefill_ms", "decode_ms", "other_ms", "ms/step",
                       "TFLOP/s v/p/d"))
    print(f"collate {report['collate_ms_per_item_one_thread']} ms/item (one thread); "
          f"floor {report.get('floor_items_per_s_at_peak')} items/s at {args.peak_tflops} TFLOP/s")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
