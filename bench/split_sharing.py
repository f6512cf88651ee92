"""Prefix sharing on a model split over several devices (issue 16): the same items, tokens and speed-up.

`python -m bench.split_sharing --device cuda [--shape 2b] [--items 576] [--batch-size 64] [--out F.json]`

A split model decodes with transformers' `generate` (the fast decoder needs one device), so sharing runs as
`prefix_sharing.SharedPrompt.generate`: each image's prefix prefilled once into a `DynamicCache` whose layers
live on their own devices, the rows copied to the questions, `generate` continuing from there. The model is
split the way a `--gpus-per-model` run splits it: the vision tower, embeddings and the first language layers
on GPU 0, the other language layers on GPU 1 when there is one, else the last `--cpu-layers` on the CPU
(the CPU then bounds the speed: read the ratio, not the items/s). The POPE-like set (18 questions an image)
runs through the product's path (`bench.prefix.run_ours`: planning, workers, `run_batches`) with and
without sharing, same batch size; the report gives items/s of both, their ratio, how many prefixes were
prefilled, and the token agreement of the two (float32 by default, TF32 off: both sides do the same
arithmetic up to batch-shape-dependent kernel choices).

`--device cpu` runs the same with the tiny model, every layer on the CPU (a check of this script).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import fill_defaults
from bench.prefix import run_ours
from bench.report import print_table, write_report
from bench.throughput import agreement, device_description
from launcher.generation import GenerationSettings


def split_device_map(config: Any, cpu_layers: int) -> dict[str, Any]:
    """Vision, projector, embeddings, norm and head on GPU 0; the language layers over the GPUs, or the last
    `cpu_layers` on the CPU when only one GPU is visible."""
    layers = int(config.text_config.num_hidden_layers)
    gpus = torch.cuda.device_count()
    device_map: dict[str, Any] = {"model.vision_tower": 0, "model.multi_modal_projector": 0,
                                  "model.language_model.embed_tokens": 0, "model.language_model.norm": 0,
                                  "model.language_model.rotary_emb": 0, "lm_head": 0}
    for layer in range(layers):
        if gpus >= 2:
            device = 0 if layer < layers // 2 else 1
        else:
            device = "cpu" if layer >= layers - cpu_layers else 0
        device_map[f"model.language_model.layers.{layer}"] = device
    return device_map


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.data import make_set
    from bench.models import build_config, build_random_internvl

    started = time.monotonic()
    dtype = {"float32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = build_config(args.shape)
    image_size = config.vision_config.image_size
    tile = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    scratch = Path(tempfile.mkdtemp(prefix="bench_split_sharing_"))
    try:
        synthetic = make_set("pope", args.items, tile, args.seed).to_files(scratch / "pope")
        if args.device == "cuda":
            device_map = split_device_map(config, args.cpu_layers)
            # main_device "cpu": the CPU's layers run there, their KV cache there too, as on a second GPU.
            model, processor = build_random_internvl(args.shape, "cuda:0", dtype, device_map=device_map,
                                                     main_device="cpu" if "cpu" in device_map.values() else None)
        else:
            device_map = {"": "cpu"}
            model, processor = build_random_internvl(args.shape, "cpu", dtype)
        devices = sorted({str(device) for device in device_map.values()})
        print(f"[split-sharing] built {args.shape} over {devices}: {model.bench_info}", flush=True)
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
        common = {"batch_size": args.batch_size, "num_workers": args.num_workers, "free_bytes": None}
        # Warm-up (kernels, allocator, worker fork), not timed.
        warm = type(synthetic)("pope", synthetic.items[:args.batch_size], synthetic.dynamic, synthetic.max_num)
        run_ours(model, processor, warm, dtype, settings, sharing=True, **common)
        rows = []
        for sharing in (True, False):
            row = run_ours(model, processor, synthetic, dtype, settings, sharing=sharing, **common)
            rows.append({"mode": "prefix sharing" if sharing else "--no-prefix-sharing", **row})
            shown = {k: v for k, v in rows[-1].items() if k not in ("predictions", "batch_choice")}
            print(f"[split-sharing] {json.dumps(shown, default=str)}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shared, alone = rows
    return {"kind": "split_prefix_sharing", "shape": args.shape, "dtype": args.dtype, "devices": devices,
            "device_map": {k: str(v) for k, v in device_map.items()}, "model": model.bench_info,
            "environment": device_description(torch.device("cuda:0" if args.device == "cuda" else "cpu")),
            "set": synthetic.describe(), "max_new_tokens": args.max_new_tokens,
            "rows": rows, "sharing_speedup": round(shared["items_per_s"] / alone["items_per_s"], 3),
            "agreement_shared_vs_unshared": agreement(alone["predictions"], shared["predictions"]),
            "seconds_total": round(time.monotonic() - started, 1)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shape", default=None, help="tiny, 2b, 8b (default: 2b on cuda, tiny on cpu)")
    parser.add_argument("--dtype", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--items", type=int, default=None, help="POPE-like items (18 an image)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cpu-layers", type=int, default=2, help="one GPU: language layers put on the CPU")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = {"shape": "tiny" if cpu else "2b", "items": 72 if cpu else 576, "batch_size": 16 if cpu else 64,
                "max_new_tokens": 4 if cpu else 16,
                "num_workers": 1 if cpu else min(8, max(1, (os.cpu_count() or 2) - 1))}
    fill_defaults(args, defaults)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no GPU here", file=sys.stderr)
        return 2
    report = run(args)
    print_table([{k: row.get(k) for k in ("mode", "items", "items_per_s", "batch_size", "batches", "shared")}
                 for row in report["rows"]], ("mode", "items", "items_per_s", "batch_size", "batches", "shared"))
    print(f"sharing speed-up {report['sharing_speedup']}x; agreement {report['agreement_shared_vs_unshared']}")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
