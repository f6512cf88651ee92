"""`launch.py --dry-run`: print the replica layout and each device map with bytes per GPU, load nothing.

Without --assume-gpus the plan is for this machine's visible GPUs and their real memory; with
`--assume-gpus G --gpu-memory-gib M` it is for any machine, including one without GPUs. A plan that does
not fit exits 2 and says which GPU overflows and what to change.
"""
from __future__ import annotations

import sys

from launcher.cli import RunConfig
from launcher.device_map import GIB, dry_run_plan, format_plan
from launcher.errors import UserError

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PLANNING_BATCH_SIZE = 16


def _tiles(config: RunConfig) -> int:
    # With --dynamic an image may take max_num tiles plus the thumbnail; plan for the worst case.
    return config.max_num + 1 if config.dynamic else 1


def print_dry_run(config: RunConfig) -> int:
    """Print the plan; returns 0 when it fits (PlanDoesNotFit is a UserError: exit 2 with the reason)."""
    if config.assume_gpus is not None:
        if config.gpu_memory_gib is None:
            raise UserError("--assume-gpus needs --gpu-memory-gib (the memory of each assumed GPU)")
        gpus, memory = config.assume_gpus, int(config.gpu_memory_gib * GIB)
    else:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise UserError("no GPU is visible here: plan for another machine with "
                            "--assume-gpus G --gpu-memory-gib M")
        memory = int(config.gpu_memory_gib * GIB) if config.gpu_memory_gib else \
            torch.cuda.get_device_properties(0).total_memory
    gpus_per_model = gpus if config.auto else config.gpus_per_model
    dtype_bytes = 1 if config.load_in_8bit else _DTYPE_BYTES[config.dtype or "bfloat16"]
    if config.load_in_4bit:
        dtype_bytes = 1  # bounded above by int8: 4-bit packs two weights a byte
    from launcher.model_code import converted_skeleton

    # --batch-size auto is decided after loading, from the free memory: plan the headroom of a default batch.
    batch_size = config.batch_size or PLANNING_BATCH_SIZE
    plans = dry_run_plan(config.checkpoint, gpus_per_model, gpus, memory, batch_size, _tiles(config),
                         config.max_new_tokens or 32, dtype_bytes, trust_remote_code=config.trust_remote_code,
                         method=config.device_map_method, skeleton=converted_skeleton(config))
    print(f"{len(plans)} replica(s) x {gpus_per_model} GPU(s) on {gpus} GPU(s) of {memory / GIB:.1f} GiB; "
          f"batch size {batch_size}{'' if config.batch_size else ' (headroom planned for; auto picks after loading)'}, "
          f"up to {_tiles(config)} tile(s) per image")
    for plan in plans:
        print(format_plan(plan))
    print("every replica fits; start it with: torchrun --nproc_per_node "
          f"{len(plans)} launch.py ... --gpus-per-model {gpus_per_model}", file=sys.stderr)
    return 0
