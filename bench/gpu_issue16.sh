#!/usr/bin/env bash
# Issue 16, second GPU session: the next batch joined in a thread (GPU idle, default vs plain static-cache
# generate) and prefix sharing on a split model. One device command per phase (each under 10 minutes),
# run back to back so the machine stays warm; each writes under $OUT and prints what bench/RESULTS.md records.
#
#   bash bench/gpu_issue16.sh split        # bench.split_sharing: 2B split GPU 0 + (GPU 1 | last 2 layers on CPU)
#   bash bench/gpu_issue16.sh prefix [2b]  # bench/gpu_prefix.sh: POPE-like, DocVQA-like, distinct, plain static
#   bash bench/gpu_issue16.sh join         # default flags, next batch joined in a thread vs after, alternating
#
# From a fresh checkout on the GPU image (torch 2.11, transformers 5.17, accelerate, no network).
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export OUT NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
PYTHON=${PYTHON:-python3}
case "${1:-}" in
  split)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    timeout -k 10 540 $PYTHON -m bench.split_sharing --device cuda --out "$OUT/split_sharing.json" 2>&1 \
      | tee "$OUT/split_sharing.log"
    echo "=== split sharing rc=${PIPESTATUS[0]}" ;;
  join)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    lscpu | grep -E "Model name|^CPU\(s\)" || true
    timeout -k 10 540 $PYTHON -m bench.prefix --device cuda --shape 2b --sets distinct,pope --compare-join-ahead 2 \
      --budget-s 470 --out "$OUT/join_ahead.json" 2>&1 | tee "$OUT/join_ahead.log"
    echo "=== join ahead rc=${PIPESTATUS[0]}" ;;
  prefix)
    lscpu | grep -E "Model name|^CPU\(s\)" || true
    BENCH_BUDGET_S=${BENCH_BUDGET_S:-540} bash bench/gpu_prefix.sh "${2:-2b}" ;;
  *)
    echo "usage: bash bench/gpu_issue16.sh split|join|prefix [2b|8b]" >&2; exit 2 ;;
esac
