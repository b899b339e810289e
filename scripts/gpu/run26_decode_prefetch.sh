#!/bin/bash
# GPU run 26 (session 8): every CUDA test, then decoding side by side: session 6's binary
# (s6-base, main at b487eb0), this one with its defaults (block step on, GEMV weights prefetched
# into L2 before the PDL wait, the norm's rows summed in one pass), and this one with each of
# those off (S6_PREFETCH=0: neither the GEMVs nor the scan step prefetch; S6_BLOCK_STEP=0).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
for b in s6-base s6 "env S6_PREFETCH=0 dev-out/s6" "env S6_BLOCK_STEP=0 dev-out/s6"; do
  [ "${b:0:3}" = env ] || b="dev-out/$b"
  echo "== $b"
  $b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,4,8,16 --tokens 128 --repeats 3 2>&1 | grep graph
  $b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8,128 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
