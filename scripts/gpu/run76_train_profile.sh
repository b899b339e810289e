#!/bin/bash
# GPU run 76: where 130M training's step goes with bf16 training storage on (the new default):
# the op-by-op profile, then every kernel of one step under Nsight Compute (each alone, cold
# caches; summed by ncu_summary.py).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
timeout 120 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile 2>&1 | grep -A45 "^profile (each"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 300 $NCU --clock-control none --csv --page raw --launch-skip 1400 --launch-count 1400 \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread \
  dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 \
  > $OUT/ncu-train.csv 2> $OUT/ncu-train.err
python3 scripts/gpu/ncu_summary.py $OUT/ncu-train.csv | head -45; tail -2 $OUT/ncu-train.err
date -u
