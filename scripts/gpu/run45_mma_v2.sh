#!/bin/bash
# GPU run 45 (session 11): the tensor-core kernel's second structure (a block of 8 warps per
# 32 × 32 tile, each warp loading all of its 1-4 k-steps at once; warps' sums added in shared
# memory): the kernel and decoding tests, then decoding side by side with dev-out/s6-prev (main at
# d7861cd), and the k-steps per warp at batch 128.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for n in test-cuda test-cuda_decode; do
  timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
date -u
for bin in s6-prev s6 s6-prev s6; do
  echo "== $bin"
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 3 2>&1 | grep graph
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
for spw in 1 2; do
  echo "== S6_MMA_SPW=$spw"
  S6_MMA_SPW=$spw dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 64 --repeats 2 2>&1 | grep graph
  S6_MMA_SPW=$spw dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
