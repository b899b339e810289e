#!/bin/bash
# GPU run 41 (session 10): bf16 activation copies (S6_ACT_BF16=1: the norm, the scan and the
# large-batch scan step also write their outputs in bf16, and the next bf16 product reads them
# instead of casting). Every CUDA test (the new one compares copies on and off bit for bit), then
# 1.4B decoding at batch 128 and prefill with the copies off and on.
. "$(dirname "$0")/cuda_tests.sh"
date -u
run_cuda_tests
for v in 0 1; do
  echo "== S6_ACT_BF16=$v"
  S6_ACT_BF16=$v dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 32 --repeats 2 2>&1 | grep graph
  S6_ACT_BF16=$v dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
date -u
