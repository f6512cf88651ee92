#!/usr/bin/env bash
# Every GPU measurement of one lease, in one command. Writes JSON and one log under $OUT (at most 8 files).
#
#   bench/gpu_session.sh [STEPS]        STEPS: comma list of step names below, or "all" (default)
#
# Steps, in order (each has its own timeout; the whole session stops starting steps after
# BENCH_BUDGET_S seconds, default 470, so that one device command of 10 minutes holds it):
#   profile      1 GPU, 2B: plain generate on pre-made inputs at batch 64/128/256 (the baseline),
#                split into vision / prefill / decode / other, + static cache, + torch.profiler kernels
#   tp_ours      1 GPU, 2B, 2048 items: ours at batch 256 and 128 (8 workers) + static cache; DataLoader waits
#   tp_ours4     the same at batch 256 with 4 workers (is preprocessing the limit?)
#   tp_final     1 GPU, 2B, 2048 items, one process: InternVL-style loop, plain generate on pre-made inputs
#                at batch 128 and 256 (twice each), ours at 256 (twice) and 128: the one-GPU targets
#   scale4_8b    torchrun on 4 GPUs, 8B: rank 0 alone (one GPU), static and dynamic over 4; realistic
#                (2048 items) and skewed (1024) sets, batch 64: scaling and slowest/fastest ratios
#   scale2_8b    the same on GPUs 0,1, realistic set only (the 2-GPU point of the scaling curve)
#   scale4_8b_long  scale4_8b with 6144 realistic items (fixed per-process costs weigh 3x less)
#   gpu_tests    the GPU-only tests (CUDA-graph replay vs generate; uint8 pixels on the device)
#   tp_single    1 GPU, 2B shape: InternVL-style batch-1 loop vs HF batched vs ours (+ no-workers ablation)
#   tp_workers   torchrun on 2 GPUs: one-GPU reference, static vs dynamic schedule, realistic + skewed sets
#   sp_single    8B on one GPU: bf16, 8-bit, 4-bit
#   sp_split     8B layer-split over 2 GPUs in one process (planner and InternVL's rule), bf16/8-bit/4-bit,
#                after the product's own --load-in-8bit/4bit loading path on a tiny checkpoint
#   sp_big       38B over 2 GPUs with max_memory capped below its size
#   sp_replicas  8B, two independent replicas (one process per GPU), same items
#   tp_static    1 GPU, 2B: ours with the dynamic cache vs generate(cache_implementation="static")
#
# On the device machine: run from the repository root, e.g.
#   bash bench/gpu_session.sh all
# BENCH_DEVICE=cpu runs the same steps with the tiny model on the CPU (a check of this script).
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
STEPS=${1:-all}
BUDGET=${BENCH_BUDGET_S:-470}
DEVICE=${BENCH_DEVICE:-cuda}
SCRATCH=$(mktemp -d /tmp/bench_session.XXXXXX)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
PYTHON=${PYTHON:-python3}
START=$(date +%s)

if [ "$DEVICE" = cuda ] && ! $PYTHON -c "import bitsandbytes" 2>/dev/null && ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=.:/tmp/site
fi

wanted() { [ "$STEPS" = all ] || [[ ",$STEPS," == *",$1,"* ]]; }

step() {  # step NAME TIMEOUT COMMAND...
  local name=$1 want=$2; shift 2
  wanted "$name" || return 0
  local left=$((BUDGET - ($(date +%s) - START)))
  local limit=$(( want < left - 5 ? want : left - 5 ))
  if [ "$limit" -lt 30 ]; then echo "=== SKIP $name: ${left}s left of ${BUDGET}s"; return 0; fi
  echo "=== $name (timeout ${limit}s): $*"
  timeout -k 10 "$limit" "$@"
  echo "=== $name rc=$? at $(( $(date +%s) - START ))s"
}

if [ "$DEVICE" = cuda ]; then
  GPU0="env CUDA_VISIBLE_DEVICES=0"; GPU1="env CUDA_VISIBLE_DEVICES=1"
  TP_WORKER_SIZES="--items 768 --skewed-items 768 --batch-sizes 64 --num-workers 2"
  TP_SINGLE_SIZES="--loop-items 32 --batch-sizes 128,256"
  TP_OURS_SIZES="--items 2048 --batch-sizes 256,128"; TP_OURS4_SIZES="--items 2048 --batch-sizes 256"
  TP_FINAL_SIZES="--items 2048 --loop-items 32 --batch-sizes 256 --plain-batch-sizes 256"
  SCALE_SIZES="--shape 8b --items 2048 --skewed-items 1024 --batch-sizes 64"
  SCALE_LONG_SIZES="--shape 8b --items 6144 --skewed-items 1024 --batch-sizes 64"
  GPUS4=0,1,2,3; GPUS2=0,1; NPROC4=4
else
  GPU0="env"; GPU1="env"; TP_WORKER_SIZES=""; TP_SINGLE_SIZES=""; TP_OURS_SIZES=""; TP_OURS4_SIZES=""
  TP_FINAL_SIZES="--items 24 --loop-items 4 --batch-sizes 8,4 --plain-batch-sizes 4,8"
  SCALE_SIZES="--items 24 --skewed-items 24 --batch-sizes 4"; SCALE_LONG_SIZES="--items 48 --skewed-items 24 --batch-sizes 4"
  GPUS4=; GPUS2=; NPROC4=2
fi
RUN="$PYTHON -m"

{
  echo "=== session $(date -u +%FT%TZ) steps=$STEPS device=$DEVICE"
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv
    nvidia-smi topo -m 2>/dev/null | head -5
  fi
  $PYTHON -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'gpus', torch.cuda.device_count())"
  $PYTHON -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1

  step profile 300 $GPU0 $RUN bench.profile_generate --device $DEVICE --out "$OUT/profile.json"
  step tp_ours 240 $GPU0 $RUN bench.throughput --device $DEVICE --sections ours,static_cache $TP_OURS_SIZES \
       --num-workers 8 --repeats 1 --out "$OUT/throughput_ours.json"
  step tp_ours4 90 $GPU0 $RUN bench.throughput --device $DEVICE --sections ours $TP_OURS4_SIZES --num-workers 4 \
       --repeats 1 --out "$OUT/throughput_ours_4workers.json"
  step tp_final 240 $GPU0 $RUN bench.throughput --device $DEVICE --sections loop,plain,ours $TP_FINAL_SIZES \
       --repeats 2 --num-workers 8 --out "$OUT/throughput_1gpu_final.json"
  step scale4_8b 300 env CUDA_VISIBLE_DEVICES=$GPUS4 $RUN torch.distributed.run --nproc_per_node $NPROC4 \
       --master_port 29534 -m bench.throughput --device $DEVICE --worker $SCALE_SIZES --num-workers 8 \
       --out "$OUT/scaling_4gpu_8b.json"
  step scale2_8b 120 env CUDA_VISIBLE_DEVICES=$GPUS2 $RUN torch.distributed.run --nproc_per_node 2 \
       --master_port 29535 -m bench.throughput --device $DEVICE --worker $SCALE_SIZES --num-workers 8 \
       --sets realistic --skip-one-gpu --out "$OUT/scaling_2gpu_8b.json"
  step scale4_8b_long 330 env CUDA_VISIBLE_DEVICES=$GPUS4 $RUN torch.distributed.run --nproc_per_node $NPROC4 \
       --master_port 29536 -m bench.throughput --device $DEVICE --worker $SCALE_LONG_SIZES --num-workers 8 \
       --out "$OUT/scaling_4gpu_8b_long.json"
  step gpu_tests 90 $PYTHON -m pytest -q -x -p no:cacheprovider tests/test_fast_decode.py tests/test_pixel_transfer.py
  step tp_single 150 $GPU0 $RUN bench.throughput --device $DEVICE $TP_SINGLE_SIZES --out "$OUT/throughput_1gpu.json"
  step tp_workers 140 $RUN torch.distributed.run --nproc_per_node 2 --master_port 29533 -m bench.throughput \
       --device $DEVICE --worker $TP_WORKER_SIZES --out "$OUT/throughput_2gpu.json"
  step sp_single 110 $GPU0 $RUN bench.split_mode --mode single --device $DEVICE --scratch "$SCRATCH" \
       --out "$OUT/split_single.json"
  step sp_split 140 $RUN bench.split_mode --mode split --device $DEVICE --scratch "$SCRATCH" --out "$OUT/split_split.json"
  step sp_big 100 $RUN bench.split_mode --mode big --device $DEVICE --scratch "$SCRATCH" --out "$OUT/split_big.json"
  step sp_replicas 80 bash -c "$GPU0 $RUN bench.split_mode --mode replica --replica-index 0 --device $DEVICE \
       --scratch '$SCRATCH' --out '$OUT/split_replicas.json' & $GPU1 $RUN bench.split_mode --mode replica \
       --replica-index 1 --device $DEVICE --scratch '$SCRATCH'; wait"
  step tp_static 150 $GPU0 $RUN bench.throughput --device $DEVICE --sections static_cache --batch-sizes 128 \
       --repeats 2 --out "$OUT/throughput_static_cache.json"
  echo "=== session done at $(( $(date +%s) - START ))s"
} 2>&1 | grep --line-buffered -v -E "FutureWarning|UserWarning|warnings.warn|kernels-community" | tee "$OUT/session.log"
rm -rf "$SCRATCH"
