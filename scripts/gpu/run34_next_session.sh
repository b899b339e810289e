#!/bin/bash
# GPU run 34 (prepared in session 9 for the next one): every CUDA test with the final defaults
# (two columns per warp group at one row: the backward, train and kernel tests have not run with
# it), then decoding at batch 1, 2, 4 and 8 with the GEMV's column settings for 2-4 rows
# (S6_GEMV_NC24 = 1, the default, 2, 4) and 4 columns at one row. Binary: dev-out/s6 (and the four
# test binaries), built with `--features cuda`.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
for e in "" "S6_GEMV_NC24=2" "S6_GEMV_NC24=4" "S6_GEMV_NC1=4" ""; do
  echo "== ${e:-default}"
  env $e dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,2,4,8 --tokens 128 --repeats 3 2>&1 | grep graph
  env $e dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,2,4,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
S6_GEMV_NC24=2 timeout 150 dev-out/test-cuda --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
date -u
