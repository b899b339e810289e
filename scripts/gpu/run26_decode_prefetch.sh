#!/bin/bash
# GPU run 26 (session 8): every CUDA test (cuda_decode again with the L2 prefetch on), then
# decoding side by side: session 6's binary (s6-base, main at b487eb0); this one with its
# defaults (block step on, the norm's rows summed in one pass); with the decoding kernels' L2
# prefetch of their weights before the PDL wait (S6_PREFETCH=1: the GEMVs and the scan step; off
# by default until measured); and with the block step off (S6_BLOCK_STEP=0). Lean: it was written
# for a session whose device time was nearly spent on failed starts.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
S6_PREFETCH=1 timeout 150 dev-out/test-cuda_decode --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
for b in s6-base s6 "env S6_PREFETCH=1 dev-out/s6" "env S6_BLOCK_STEP=0 dev-out/s6"; do
  [ "${b:0:3}" = env ] || b="dev-out/$b"
  echo "== $b"
  $b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3 2>&1 | grep graph
  $b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
