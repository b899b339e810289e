#!/bin/bash
# GPU run 89, call B (session 23): training beside main (130M batch 16, 1.4B batch 8, bf16,
# L = 2048), then training memory against d_state (run 88's part 2: 130M's shape, batch 16,
# s6-prev (e886d58) beside s6 at N = 16, 32, 64).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
for bin in s6-main s6; do
  echo "== $bin"; train_bench $bin --preset mamba-130m --batch 16; train_bench $bin --preset mamba-1.4b --batch 8
done
date -u
for n in 16 64 32; do
  for bin in s6-prev s6; do
    echo "== N=$n, $bin"; train_bench $bin --batch 16 --config scripts/gpu/configs/mamba-130m-n$n.json
  done
done
date -u
