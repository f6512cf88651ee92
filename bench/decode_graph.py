"""Greedy decoding with one CUDA-graph decode step (launcher/fast_decode.py) against plain `generate`.

`python -m bench.decode_graph --device cuda [--batch-sizes 128,256] [--out F.json]`

On the `realistic` set (bench/data.py: one 448-pixel tile and 30-70 prompt tokens per item) and the
random-weight 2B shape (bench/models.py: InternViT-300M + Qwen2.5-1.5B, bf16, SDPA), one process, one
GPU, batches collated beforehand (DataLoader workers, not timed), cost-sorted as ours, already on the GPU.
Per batch size, three modes over the same batches:

1. `hf generate`: `model.generate` with its dynamic cache; CUDA-event spans from forward hooks split
   it into vision, language prefill and decode steps (bench/profile_generate.py's `PhaseTimer`);
2. `fast_decode, CUDA graph`: `GreedyDecoder(use_cuda_graph=True)`; a first pass over all batches
   captures one graph per (batch, bucketed cache length) shape and is reported apart ("capture"),
   then a timed pass replays them;
3. `fast_decode, eager step`: the same step without a graph (what the graph saves, step for step).

Reported per mode: items/s, prefill ms (vision + language over the prompt; CUDA events), decode ms and
decode ms per step (steps actually run: all three stop early once every row has emitted EOS),
capture seconds and shapes, and token agreement with `hf generate` (first token; whole sequence up to
and including EOS). Random weights give flat logits, where bf16 differences between kernels (static
masked cache vs dynamic cache) flip near-tied tokens: agreement is reported, not asserted; a trained
model agrees far more often (tests/test_fast_decode.py: exact in float32).

`--device cpu` runs the same with the tiny model and eager steps only (a check of this script, not a
measurement: there are no CUDA graphs on CPU).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import fill_defaults, sync_device
from bench.profile_generate import PhaseTimer, premade_batches
from bench.report import print_table, write_report
from bench.throughput import device_description, make_workload, one_device

MODES = ("hf", "graph", "eager")


def run_generate(model: Any, on_device: list[dict[str, torch.Tensor]], max_new_tokens: int, eos_token_id: int,
                 pad_token_id: int) -> tuple[dict[str, Any], list[list[int]]]:
    """Plain greedy `generate` over the batches: rate, phase spans, and the new tokens of every item."""
    timer = PhaseTimer(model, on_device[0]["input_ids"].device)
    outputs = []
    phases = {"vision": 0.0, "prefill": 0.0, "decode": 0.0, "decode_steps": 0}
    try:
        sync_device()
        started = time.perf_counter()
        for inputs in on_device:
            timer.begin()
            with torch.inference_mode():
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        eos_token_id=eos_token_id, pad_token_id=pad_token_id)
            outputs.append(output[:, inputs["input_ids"].shape[1]:])
            for phase, value in timer.totals_ms().items():       # synchronises: inside the timed span
                phases[phase] += value
        seconds = time.perf_counter() - started
    finally:
        timer.remove()
    row = _rate(on_device, seconds)
    steps = max(1, phases["decode_steps"])
    row["ms"] = {"vision": round(phases["vision"], 1), "prefill_language": round(phases["prefill"], 1),
                 "prefill": round(phases["vision"] + phases["prefill"], 1), "decode": round(phases["decode"], 1)}
    row["decode_steps"] = phases["decode_steps"]
    row["decode_ms_per_step"] = round(phases["decode"] / steps, 2)
    return row, [tokens for output in outputs for tokens in output.tolist()]


def run_fast(decoder: Any, on_device: list[dict[str, torch.Tensor]],
             max_new_tokens: int) -> tuple[dict[str, Any], list[list[int]]]:
    """`decoder.generate` over the batches: rate, prefill/decode spans (CUDA events), the new tokens."""
    outputs = []
    prefill_ms = decode_ms = 0.0
    steps = 0
    sync_device()
    started = time.perf_counter()
    for inputs in on_device:
        outputs.append(decoder.generate(inputs, max_new_tokens))
        timings = decoder.last_timings()
        prefill_ms += timings["prefill_ms"]
        decode_ms += timings["decode_ms"]
        steps += timings["decode_steps"]
    sync_device()
    seconds = time.perf_counter() - started
    row = _rate(on_device, seconds)
    row["ms"] = {"prefill": round(prefill_ms, 1), "decode": round(decode_ms, 1)}
    row["decode_steps"] = steps
    row["decode_ms_per_step"] = round(decode_ms / max(1, steps), 2)
    return row, [tokens for output in outputs for tokens in output.tolist()]


def _rate(on_device: list[dict[str, torch.Tensor]], seconds: float) -> dict[str, Any]:
    items = sum(int(inputs["input_ids"].shape[0]) for inputs in on_device)
    return {"items": items, "batches": len(on_device), "seconds": round(seconds, 3),
            "items_per_s": round(items / seconds, 2)}


def until_eos(tokens: list[int], eos_token_id: int) -> list[int]:
    """The tokens up to and including the first EOS (what a caller decodes; padding after it dropped)."""
    return tokens[:tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens


def agreement(reference: list[list[int]], other: list[list[int]], eos_token_id: int) -> dict[str, Any]:
    """Share of items whose first token, and whose whole sequence up to EOS, equal the reference's."""
    pairs = [(until_eos(a, eos_token_id), until_eos(b, eos_token_id)) for a, b in zip(reference, other, strict=True)]
    if not pairs:
        return {"items": 0}
    first = sum(bool(a and b and a[0] == b[0]) for a, b in pairs)
    exact = sum(a == b for a, b in pairs)
    return {"items": len(pairs), "first_token": round(first / len(pairs), 4),
            "exact_sequence": round(exact / len(pairs), 4)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import build_random_internvl
    from launcher.fast_decode import GreedyDecoder, unsupported_reason
    from launcher.scheduler import plan_batches

    device, dtype = one_device(args.device)
    model, processor = build_random_internvl(args.shape, device, dtype)
    synthetic, items, prompts, adapter, costs = make_workload(model, processor, dtype, args.items)
    eos_token_id, pad_token_id = adapter.tokenizer.eos_token_id, adapter.tokenizer.pad_token_id
    everything = list(range(len(items)))
    modes = [mode for mode in args.modes if mode != "graph" or device.type == "cuda"]
    report: dict[str, Any] = {"kind": "decode_graph", "shape": args.shape, "model": model.bench_info,
                              "environment": device_description(device), "set": synthetic.describe(),
                              "max_new_tokens": args.max_new_tokens, "length_bucket": args.length_bucket,
                              "unsupported_reason": unsupported_reason(model), "modes": modes, "rows": []}

    for batch_size in args.batch_sizes:
        batches = plan_batches(everything, costs, batch_size, 0, 1, False)   # as a one-process run plans them
        made = premade_batches(adapter, items, prompts, batches, args.num_workers)
        on_device = [dict(inputs.to(device, dtype)) for inputs in made]
        del made
        prompt_lengths = sorted({int(inputs["input_ids"].shape[1]) for inputs in on_device})
        reference = None
        fast_rows: dict[str, tuple[dict[str, Any], list[list[int]]]] = {}
        if "hf" in modes:
            run_generate(model, on_device[:1], args.max_new_tokens, eos_token_id, pad_token_id)   # warm-up
            row, reference = run_generate(model, on_device, args.max_new_tokens, eos_token_id, pad_token_id)
            report["rows"].append({"mode": "hf generate (dynamic cache)", "batch_size": batch_size,
                                   "prompt_lengths": prompt_lengths, **row})
            print(f"[decode_graph] batch {batch_size} hf generate: {row['items_per_s']} items/s, "
                  f"{row['decode_ms_per_step']} ms/step", flush=True)
        for mode in ("graph", "eager"):
            if mode not in modes:
                continue
            decoder = GreedyDecoder(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                    use_cuda_graph=mode == "graph", length_bucket=args.length_bucket,
                                    max_shapes=args.max_shapes, capture_after_uses=1, record_timings=True)
            first_pass, _ = run_fast(decoder, on_device, args.max_new_tokens)    # captures every shape
            row, tokens = run_fast(decoder, on_device, args.max_new_tokens)
            captures = {name: value["capture_seconds"] for name, value in decoder.stats.items()}
            extra: dict[str, Any] = {"first_pass_seconds": first_pass["seconds"], "shapes": list(captures)}
            if mode == "graph":
                extra["capture_seconds"] = captures
                extra["capture_seconds_total"] = round(sum(v or 0.0 for v in captures.values()), 3)
            if reference is not None:
                extra["agreement_vs_generate"] = agreement(reference, tokens, eos_token_id)
            name = "fast_decode, CUDA graph" if mode == "graph" else "fast_decode, eager step"
            report["rows"].append({"mode": name, "batch_size": batch_size, "prompt_lengths": prompt_lengths,
                                   **row, **extra})
            fast_rows[mode] = (report["rows"][-1], tokens)
            print(f"[decode_graph] batch {batch_size} {name}: {row['items_per_s']} items/s, "
                  f"{row['decode_ms_per_step']} ms/step, agreement {extra.get('agreement_vs_generate')}",
                  flush=True)
            del decoder
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if len(fast_rows) == 2:        # the graph replays the eager step's kernels: expect 1.0
            fast_rows["graph"][0]["agreement_vs_eager"] = agreement(fast_rows["eager"][1], fast_rows["graph"][1],
                                                                    eos_token_id)
        del on_device
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
    parser.add_argument("--length-bucket", type=int, default=64, help="cache length rounded up to this multiple")
    parser.add_argument("--max-shapes", type=int, default=8, help="graphs/caches kept (enough for every shape)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of: {', '.join(MODES)}")
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = {"shape": "tiny" if cpu else "2b", "items": 24 if cpu else 1024,
                "batch_sizes": [4, 8] if cpu else [128, 256], "max_new_tokens": 4 if cpu else 16,
                "num_workers": 1 if cpu else 8}
    fill_defaults(args, defaults)
    args.modes = [mode for mode in args.modes.split(",") if mode]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
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
        agree = row.get("agreement_vs_generate") or {}
        rows.append({"mode": row["mode"], "batch": row["batch_size"], "items/s": row["items_per_s"],
                     "prefill_ms": ms.get("prefill", ""), "decode_ms": ms.get("decode", ""),
                     "steps": row.get("decode_steps", ""), "ms/step": row.get("decode_ms_per_step", ""),
                     "capture_s": row.get("capture_seconds_total", ""),
                     "first_tok": agree.get("first_token", ""), "exact_seq": agree.get("exact_sequence", "")})
    print_table(rows, ("mode", "batch", "items/s", "prefill_ms", "decode_ms", "steps", "ms/step", "capture_s",
                       "first_tok", "exact_seq"))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
