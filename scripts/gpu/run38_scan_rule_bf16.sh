#!/bin/bash
# GPU run 38 (session 10): the d_state-16 scan's kernel rule (16 channels per block and chunks of
# 64 steps below 65,536 channels, else 32 and 32) checked against the variants forced by
# S6_SCAN_N16 at the scan benchmark's shapes, prefill (1.4B) and training (130M, 1.4B); the scan
# with bf16 activations (`--dtype bf16`); final decoding figures; every CUDA test.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for v in pipe8x v4c32 v4c16t64; do
  echo "== S6_SCAN_N16=$v"
  S6_SCAN_N16=$v timeout 100 dev-out/test-cuda --test-threads=1 scan 2>&1 | grep -E "test result|FAILED|panicked" | head -5
  S6_SCAN_N16=$v dev-out/s6 bench scan --device cuda --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048 --repeats 3 2>&1 | grep -E "^scan"
  S6_SCAN_N16=$v dev-out/s6 bench scan --device cuda --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 --repeats 5 2>&1 | grep -E "^scan"
  S6_SCAN_N16=$v dev-out/s6 bench scan --device cuda --scan-batch 8 --scan-d-inner 4096 --scan-seqlen 2048 --repeats 5 2>&1 | grep -E "^scan"
done
echo "== default"
dev-out/s6 bench scan --device cuda --repeats 10 2>&1 | grep -E "^scan"
dev-out/s6 bench scan --device cuda --dtype bf16 --repeats 10 2>&1 | grep -E "^scan"
dev-out/s6 bench scan --device cuda --dtype bf16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048 --repeats 3 2>&1 | grep -E "^scan"
date -u
for v in v4c32 v4c16t64; do
  echo "== S6_SCAN_N16=$v"
  S6_SCAN_N16=$v dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
echo "== default"
dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 2>&1 | grep -E "^train"
dev-out/s6-prev bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 2>&1 | grep -E "^train"
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-130m --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
dev-out/s6-prev bench prefill --device cuda --dtype bf16 --preset mamba-130m --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
date -u
run_cuda_tests
date -u
