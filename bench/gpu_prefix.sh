#!/usr/bin/env bash
# Issue 16 on one GPU, in one command: prefix sharing (POPE-like, DocVQA-like sets), --batch-size auto against
# fixed batch sizes and plain generate with the static cache, the GPU's waits; 2B and 8B shapes.
#
#   bash bench/gpu_prefix.sh [SHAPES]        SHAPES: comma list of 2b, 8b (default "2b,8b")
#
# Runs from a fresh checkout with PYTHONPATH=. (no network, nothing installed): one `python -m bench.prefix`
# per shape, each with what is left of BENCH_BUDGET_S (default 540 s: one 10-minute device command; rows that
# would start too late are skipped and listed in the JSON), then the targets table over both. Writes
# $OUT/prefix_<shape>.json and $OUT/prefix.log (OUT defaults to bench/out).
# BENCH_DEVICE=cpu runs the same with the tiny model on the CPU (a check of this script, not a measurement).
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
SHAPES=${1:-2b,8b}
BUDGET=${BENCH_BUDGET_S:-540}
DEVICE=${BENCH_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
START=$(date +%s)
{
  echo "=== prefix session $(date -u +%FT%TZ) shapes=$SHAPES device=$DEVICE budget=${BUDGET}s"
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader
  $PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  reports=()
  IFS=, read -ra shape_list <<< "$SHAPES"
  count=${#shape_list[@]}
  for index in "${!shape_list[@]}"; do
    shape=${shape_list[$index]}
    left=$((BUDGET - ($(date +%s) - START)))
    # Share what is left among the shapes still to run (the 2B rows first, so they always complete).
    share=$(( left / (count - index) ))
    if [ "$share" -lt 60 ]; then echo "=== SKIP $shape: ${left}s left"; continue; fi
    shape_arg=$shape
    [ "$DEVICE" = cpu ] && shape_arg=tiny
    echo "=== $shape (budget ${share}s)"
    timeout -k 10 $((share + 60)) $PYTHON -m bench.prefix --device "$DEVICE" --shape "$shape_arg" \
      --budget-s $((share - 20)) --out "$OUT/prefix_$shape.json"
    echo "=== $shape rc=$? at $(( $(date +%s) - START ))s"
    [ -f "$OUT/prefix_$shape.json" ] && reports+=("$OUT/prefix_$shape.json")
  done
  if [ ${#reports[@]} -gt 0 ]; then
    echo "=== targets"
    $PYTHON -m bench.prefix --summarize "${reports[@]}"
  fi
  echo "=== done in $(( $(date +%s) - START ))s"
} 2>&1 | tee "$OUT/prefix.log"
