#!/bin/bash
# GPU run 37 (session 10): the vector scan kernels for d_state 16 (kernels/scan.cu, third
# structure; S6_SCAN_N16 picks the variant). The scan tests under every variant, the forward scan
# benchmark of each, 1.4B prefill and 130M training with the old kernel (pipe8x) and the new
# ones, then every CUDA test with the default. Binary: dev-out/s6 (+ test binaries).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for v in pipe8x v4c32 v4c16 v4c16t64 v2c16 v4c32u8; do
  echo "== S6_SCAN_N16=$v"
  S6_SCAN_N16=$v timeout 100 dev-out/test-cuda --test-threads=1 scan 2>&1 | grep -E "test result|FAILED|panicked" | head -5
  S6_SCAN_N16=$v dev-out/s6 bench scan --device cuda --repeats 10 2>&1 | grep -E "^scan"
done
date -u
for v in pipe8x v4c32 v4c16 v2c16; do
  echo "== S6_SCAN_N16=$v"
  S6_SCAN_N16=$v dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
  S6_SCAN_N16=$v dev-out/s6 bench scan --device cuda --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048 --repeats 3 2>&1 | grep -E "^scan"
  S6_SCAN_N16=$v dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
date -u
run_cuda_tests
date -u
