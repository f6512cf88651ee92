"""Command line of launch.py: argv -> one frozen RunConfig. Nothing after this reads argparse's namespace.

Launch modes (the same script in each)::

    # one process (CPU, or one GPU)
    python launch.py --checkpoint ckpt/ --task textvqa_val --data-root data/

    # one node, 8 GPUs: 8 replicas, items sharded across them
    torchrun --nproc_per_node 8 launch.py --checkpoint ckpt/ --task textvqa_val,docvqa_val

    # one node, a model that needs 2 GPUs: 4 replicas of 2 GPUs each
    torchrun --nproc_per_node 4 launch.py --checkpoint ckpt/ --task mmbench_dev_en --gpus-per-model 2

    # SLURM, one task per GPU (launch.py derives MASTER_ADDR / MASTER_PORT from the step; exported ones win)
    srun --ntasks-per-node 8 python launch.py --checkpoint ckpt/ --task textvqa_val

    # SLURM, one torchrun per node (slurm/eval_torchrun.sbatch)
    srun --ntasks-per-node 1 torchrun --nnodes $N --nproc_per_node 8 --rdzv-backend c10d \\
         --rdzv-endpoint $MASTER_ADDR:$MASTER_PORT launch.py --checkpoint ckpt/ --task textvqa_val

    # plan a split without loading anything, on any machine
    python launch.py --checkpoint ckpt/ --task textvqa_val --gpus-per-model 2 --dry-run \\
         --assume-gpus 8 --gpu-memory-gib 80

    # rescore an existing predictions file without a model
    python -m launcher score --task textvqa_val --predictions results/ckpt/textvqa_val/predictions.jsonl
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from launcher.errors import UserError
from launcher.generation import GenerationSettings

# None: `--batch-size auto` (launcher.batch_size: from free GPU memory, at most 256; 16 on the CPU).
DEFAULT_BATCH_SIZE: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, parsed once. Attribute names follow InternVL's where they overlap."""

    checkpoint: str | None
    tasks: tuple[str, ...]
    data: Path | None = None
    data_root: Path = Path(".")
    image_root: Path | None = None
    metric: str | None = None
    out_dir: Path | None = None
    batch_size: int | None = DEFAULT_BATCH_SIZE   # None: auto
    max_new_tokens: int | None = None
    num_beams: int = 1
    temperature: float = 0.0
    seed: int = 0
    few_shot: int = 0
    dynamic: bool = False
    max_num: int = 6
    num_workers: int | None = None      # None: `runner.default_num_workers` (--num-workers auto)
    schedule: str = "dynamic"
    static_cache: bool = False
    decode: str = "auto"
    prefix_sharing: bool = True
    gpus_per_model: int = 1
    auto: bool = False
    device_map_method: str = "planner"
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    model_code: str = "auto"
    allow_pickle_weights: bool = False
    allow_outside_root: bool = False
    dtype: str | None = None
    dry_run: bool = False
    assume_gpus: int | None = None
    gpu_memory_gib: float | None = None
    overwrite: bool = False
    timeout: float = 1800.0
    stall_timeout: float = 300.0
    on_bad_item: str = "error"
    no_shared_fs: bool = False
    selftest: bool = False
    list_tasks: bool = False
    verbose: bool = False

    @property
    def resolved_out_dir(self) -> Path:
        if self.out_dir is not None:
            return self.out_dir
        name = Path(self.checkpoint).resolve().name if self.checkpoint else "run"
        return Path("results") / name

    @property
    def resolved_image_root(self) -> Path:
        return self.image_root if self.image_root is not None else self.data_root

    def generation(self, task_max_new_tokens: int) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens or task_max_new_tokens,
            num_beams=self.num_beams, temperature=self.temperature, seed=self.seed,
            static_cache=self.static_cache, decode=self.decode)

    def to_json(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value)
                for key, value in dataclasses.asdict(self).items()}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (exit 2, one message) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see launch.py --help)")


def _count_or_auto(value: str) -> int | None:
    """A number, or None for "auto" (--batch-size, --num-workers)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="launch.py", allow_abbrev=False, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="model folder (offline)")
    model.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                       help="default: bfloat16 on GPU, float32 on CPU")
    model.add_argument("--gpus-per-model", type=int, default=1, metavar="K",
                       help="GPUs of one process (one model replica); K > 1 splits the model")
    model.add_argument("--auto", action="store_true",
                       help="InternVL's flag: K = visible GPUs / processes on this node")
    model.add_argument("--device-map", dest="device_map_method", choices=["planner", "internvl"], default="planner",
                       help="how a split model is placed: by bytes (planner) or InternVL's layer-count rule")
    model.add_argument("--load-in-8bit", action="store_true")
    model.add_argument("--load-in-4bit", action="store_true")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow checkpoints that ship their own Python code (runs that code)")
    model.add_argument("--model-code", choices=["auto", "native", "remote"], default="auto",
                       help="original InternVL folders (InternVLChatModel): auto converts them to transformers' "
                            "native model where possible, else runs their own code with --trust-remote-code; "
                            "native: convert or stop; remote: their own code (needs --trust-remote-code)")
    model.add_argument("--allow-pickle-weights", action="store_true",
                       help="load .bin/.pt weights (unpickling runs code); safetensors need no flag")

    data = parser.add_argument_group("tasks and data")
    data.add_argument("--task", "--datasets", dest="tasks", help="comma list of tasks; the model loads once")
    data.add_argument("--data", type=Path, help="override the main data file of a single task")
    data.add_argument("--data-root", type=Path, default=Path("."),
                      help="where task files live: InternVL's internvl_chat folder or its data/ folder")
    data.add_argument("--image-root", type=Path, help="base of relative image paths (default: the data root)")
    data.add_argument("--allow-outside-root", action="store_true",
                      help="allow image paths that leave the image root")
    data.add_argument("--metric", help="metric of the generic vqa task")
    data.add_argument("--on-bad-item", choices=["error", "skip"], default="error")
    data.add_argument("--list-tasks", action="store_true", help="print every task, its files and metric")

    generation = parser.add_argument_group("generation")
    generation.add_argument("--batch-size", type=_count_or_auto, default=DEFAULT_BATCH_SIZE, metavar="N|auto",
                            help="items per generate call (default auto: the most that fit the GPU's free memory "
                                 "for the task's longest prompt, at most 256; 16 on the CPU; see run.json)")
    generation.add_argument("--max-new-tokens", type=int)
    generation.add_argument("--num-beams", type=int, default=1)
    generation.add_argument("--temperature", type=float, default=0.0)
    generation.add_argument("--seed", type=int, default=0)
    generation.add_argument("--few-shot", type=int, default=0)
    generation.add_argument("--dynamic", action="store_true", help="InternVL's dynamic tiling")
    generation.add_argument("--max-num", type=int, default=6, help="most tiles per image with --dynamic")
    generation.add_argument("--num-workers", type=_count_or_auto, default=None, metavar="N|auto",
                            help="preprocessing worker processes per rank (default auto: the CPUs the rank may "
                                 "use, shared among the node's ranks, less one, at most 8)")
    generation.add_argument("--schedule", choices=["static", "dynamic"], default="dynamic")
    generation.add_argument("--static-cache", action="store_true",
                            help="static KV cache (compiled decode): about 30 s of compilation per process, "
                                 "then faster; worth it from a few thousand items per process")
    generation.add_argument("--decode", choices=["auto", "generate"], default="auto",
                            help="auto: greedy decoding by our loop (launcher.fast_decode: the decode step "
                                 "replayed from a CUDA graph on GPUs) where the model allows it, else "
                                 "transformers' generate; generate: always transformers' generate")
    generation.add_argument("--no-prefix-sharing", dest="prefix_sharing", action="store_false",
                            help="compute every question's image prefix on its own (default: questions about the "
                                 "same image in a batch share the vision tower's work and the prefill of the "
                                 "image tokens; same tokens in float32)")

    run = parser.add_argument_group("run")
    run.add_argument("--out-dir", type=Path, help="default: results/<checkpoint name>")
    run.add_argument("--overwrite", action="store_true", help="replace task folders holding a different run")
    run.add_argument("--timeout", type=float, default=1800.0, help="process-group timeout, seconds")
    run.add_argument("--stall-timeout", type=float, default=300.0,
                     help="give up on a rank that shows no sign of life for this long, seconds")
    run.add_argument("--no-shared-fs", action="store_true",
                     help="gather predictions through the process group instead of the out-dir")
    run.add_argument("--dry-run", action="store_true", help="print the placement plan, load nothing")
    run.add_argument("--assume-gpus", type=int, help="with --dry-run: plan for this many GPUs")
    run.add_argument("--gpu-memory-gib", type=float, help="with --dry-run: memory of each assumed GPU")
    run.add_argument("--selftest", action="store_true",
                     help="check topology, GPUs, process group, a gather and the out-dir; print a table")
    run.add_argument("--verbose", action="store_true", help="every rank logs, not just rank 0")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse and validate argv into a RunConfig; mistakes raise UserError naming the flag."""
    namespace = build_parser().parse_args(argv)
    values = vars(namespace)
    values["tasks"] = tuple(name.strip() for name in (values["tasks"] or "").split(",") if name.strip())
    config = RunConfig(**values)
    _validate(config)
    return config


def _validate(config: RunConfig) -> None:
    if config.list_tasks:
        return
    if not config.selftest:
        if not config.checkpoint:
            raise UserError("--checkpoint is required (a model folder)")
        if not config.tasks:
            raise UserError("--task is required (a comma list of tasks; see --list-tasks)")
    if config.load_in_8bit and config.load_in_4bit:
        raise UserError("--load-in-8bit and --load-in-4bit exclude each other: pick one")
    if config.batch_size is not None and config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.num_workers is not None and config.num_workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {config.num_workers}")
    if config.max_num < 1:
        raise UserError(f"--max-num must be at least 1, got {config.max_num}")
    if config.gpus_per_model < 1:
        raise UserError(f"--gpus-per-model must be at least 1, got {config.gpus_per_model}")
    if config.auto and config.gpus_per_model != 1:
        raise UserError("--auto and --gpus-per-model exclude each other: --auto takes all GPUs of the node")
    if config.data is not None and len(config.tasks) > 1:
        raise UserError("--data names the file of a single task; run one task at a time with --data")
    if (config.assume_gpus is not None or config.gpu_memory_gib is not None) and not config.dry_run:
        raise UserError("--assume-gpus and --gpu-memory-gib only make sense with --dry-run")
    if config.stall_timeout <= 0 or config.timeout <= 0:
        raise UserError("--timeout and --stall-timeout must be positive")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of launch.py; returns the process exit code (DESIGN: exit codes)."""
    import sys

    try:
        config = parse_args(argv)
        if config.list_tasks:
            from eval_scripts.registry import describe_tasks

            print(describe_tasks())
            return 0
        if config.dry_run:
            from launcher.planning import print_dry_run

            return print_dry_run(config)
        if config.selftest:
            from launcher.selftest import run_selftest

            return run_selftest(config)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    from launcher.evaluation import Evaluation

    return Evaluation(config).run()
