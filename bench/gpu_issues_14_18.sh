#!/usr/bin/env bash
# One GPU lease, three device commands of under 10 minutes each (run them back to back so the machine
# stays warm). Each phase writes under $OUT and prints what bench/RESULTS.md records.
#
#   bash bench/gpu_issues_14_18.sh prefix     # issue 16: prefix sharing and --batch-size auto, 2B shape (bench/gpu_prefix.sh)
#   bash bench/gpu_issues_14_18.sh checks     # issue 17 families vs plain transformers, issue 15 failure paths
#                                        # under NCCL, issue 18 sweep on GPU groups
#   bash bench/gpu_issues_14_18.sh convert    # issue 14: original folder converted at load vs convert output vs native
#   bash bench/gpu_issues_14_18.sh split      # issue 16: prefix sharing on a split model (bench.split_sharing: 2B
#                                        # over GPU 0 + GPU 1, or + the CPU for the last 2 layers on one GPU)
#   bash bench/gpu_issues_14_18.sh join       # issue 16: default flags, next batch joined in a thread + lead piece vs neither
#
# From a fresh checkout on the GPU image (torch 2.11, transformers 5.17, accelerate, no network).
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export OUT NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
PYTHON=${PYTHON:-python3}
case "${1:-}" in
  prefix)
    BENCH_BUDGET_S=${BENCH_BUDGET_S:-540} bash bench/gpu_prefix.sh "${2:-2b}" ;;
  checks)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    timeout -k 10 330 $PYTHON -m bench.families_gpu --device cuda --out "$OUT/families_gpu.json" 2>&1 \
      | tee "$OUT/families_gpu.log"
    echo "=== families rc=${PIPESTATUS[0]}"
    timeout -k 10 150 $PYTHON -m bench.failure_paths --nproc 1 --workers 2 --out "$OUT/failure_paths.json" 2>&1 \
      | tee "$OUT/failure_paths.log"
    echo "=== failure paths rc=${PIPESTATUS[0]}"
    timeout -k 10 90 $PYTHON -m bench.sweep_gpu --gpus-per-run 1 --checkpoints 3 --items 64 \
      --work /tmp/sweep_gpu 2>&1 | tail -n 40
    echo "=== sweep rc=${PIPESTATUS[0]}" ;;
  convert)
    bash bench/gpu_convert.sh "${2:-2b,8b}" ;;
  split)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    timeout -k 10 540 $PYTHON -m bench.split_sharing --device cuda --out "$OUT/split_sharing.json" 2>&1 \
      | tee "$OUT/split_sharing.log"
    echo "=== split sharing rc=${PIPESTATUS[0]}" ;;
  join)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    lscpu | grep -E "Model name|^CPU\(s\)" || true
    timeout -k 10 540 $PYTHON -m bench.prefix --device cuda --shape 2b --sets distinct,pope,docvqa --compare-join-ahead 2 \
      --budget-s 470 --out "$OUT/join_ahead.json" 2>&1 | tee "$OUT/join_ahead.log"
    echo "=== join ahead rc=${PIPESTATUS[0]}" ;;
  *)
    echo "usage: bash bench/gpu_issues_14_18.sh prefix|checks|convert|split|join" >&2; exit 2 ;;
esac
