#!/bin/bash
# GPU run 50 (prepared in session 11, for the next one): where the tensor-core kernel for small
# products (kernels/mma.cu, off by default) loses at 1.4B batch 128 (session 11, runs 44-48: -8%
# with it on). Nsight Compute's per-kernel durations of a replayed decode step with it off and on
# (S6_MMA_ROWS=256), each kernel alone with cold caches, summed per kernel by ncu_summary.py; then
# the decode figures of both, and with 4 k-steps per warp and 1, 2 or 4 warps per tile over k;
# prefill and training with it at every row count; training with and without bf16 activation
# copies (their memory).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
# The kernel's test first: its unsplit path for many rows (k walked in rounds of 4 steps) was
# written after session 11's last call.
timeout 150 dev-out/test-cuda --test-threads=1 tensor_core 2>&1 | grep -E "test result|FAILED|panicked" -A6 | head -12
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
for rows in 0 256; do
  S6_MMA_ROWS=$rows timeout 150 $NCU --clock-control none --graph-profiling node --csv --page raw \
    --launch-skip 2200 --launch-count 600 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread \
    dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 4 --repeats 1 \
    > $OUT/ncu-mma$rows.csv 2> $OUT/ncu-mma$rows.err
  echo "== S6_MMA_ROWS=$rows"; python3 scripts/gpu/ncu_summary.py $OUT/ncu-mma$rows.csv | head -16
done
date -u
for cfg in "0 2 8" "256 2 8" "256 4 8" "256 4 4" "256 4 2" "256 4 1"; do
  set -- $cfg
  echo "== S6_MMA_ROWS=$1 S6_MMA_SPW=$2 S6_MMA_WK=$3"
  S6_MMA_ROWS=$1 S6_MMA_SPW=$2 S6_MMA_WK=$3 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,128 --tokens 64 --repeats 1 2>&1 | grep graph
done
date -u
# Prefill and training with the kernel for every row count (x_proj and dt_proj unsplit there).
for rows in 0 1000000000; do
  echo "== S6_MMA_ROWS=$rows"
  S6_MMA_ROWS=$rows dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
  S6_MMA_ROWS=$rows dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
# Training with bf16 activation copies (S6_ACT_BF16=1; unmeasured in session 10: its memory).
for act in 0 1; do
  echo "== S6_ACT_BF16=$act"
  S6_ACT_BF16=$act dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
  S6_ACT_BF16=$act dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 2>&1 | grep -E "^train"
done
date -u
