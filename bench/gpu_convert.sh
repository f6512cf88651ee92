#!/usr/bin/env bash
# Original InternVL folders on the GPU: converted at load vs `launcher convert` output vs saved natively.
#
#   bash bench/gpu_convert.sh [SHAPES]      SHAPES: comma list, default "2b,8b" (bench/models.py shapes)
#
# Builds random-weight 2B-shaped (InternViT-300M + Qwen2.5-1.5B) and 8B-shaped (InternViT-300M + Qwen2.5-7B)
# models on GPU 0, writes each in our imitation of OpenGVLab's original layout and natively, converts the
# original once with `python -m launcher convert`, and measures load time and items/s through the
# product's decode path (CUDA-graph greedy loop) for the three folders (bench/convert_speed.py).
# Writes $OUT/convert_speed.json and $OUT/convert_speed.log. Needs about 35 GB of free disk for 8b
# (at most two copies of the 8b weights at a time; scratch under BENCH_SCRATCH, default /tmp). About 5 minutes on one H200.
# BENCH_DEVICE=cpu runs it with the tiny shape on the CPU (a check of this script).
set -euo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
DEVICE=${BENCH_DEVICE:-cuda}
SHAPES=${1:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
PYTHON=${PYTHON:-python3}
SCRATCH=$(mktemp -d "${BENCH_SCRATCH:-/tmp}/convert_speed.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
ARGS=(--device "$DEVICE" --workdir "$SCRATCH" --out "$OUT/convert_speed.json")
[ -n "$SHAPES" ] && ARGS+=(--shapes "$SHAPES")
[ "$DEVICE" = cpu ] && ARGS+=(--items 4 --batch-size 2 --max-new-tokens 3)
timeout 570 "$PYTHON" -m bench.convert_speed "${ARGS[@]}" 2>&1 | tee "$OUT/convert_speed.log"
