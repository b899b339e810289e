#!/bin/bash
# GPU run 33 (session 9, the last ~5 minutes of device time): the one-row GEMV's shape, batch 1,
# bf16: columns per warp group (S6_GEMV_NC1 = 1, the default, or 2) and x rounded to bf16 once
# per block in shared memory (S6_GEMV_XS=1) instead of by every warp; then the decoding tests
# with both on. All compile-time or launch settings of the same binary, read from the environment.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for e in "" "S6_GEMV_NC1=2" "S6_GEMV_XS=1" "S6_GEMV_XS=1 S6_GEMV_NC1=2" ""; do
  echo "== ${e:-default}"
  env $e dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 128 --repeats 3 2>&1 | grep graph
  env $e dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1 --tokens 64 --repeats 2 2>&1 | grep graph
done
S6_GEMV_XS=1 S6_GEMV_NC1=2 timeout 100 dev-out/test-cuda_decode --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
date -u
