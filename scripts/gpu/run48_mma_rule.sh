#!/bin/bash
# GPU run 48 (session 11): the tensor-core kernel with 8 warps of 2 k-steps per tile (run 46's
# "both:2") under its default rule (up to 16 rows, or up to 256 rows where the weight has at most
# 2^18 values): its products' tests and the decoding tests, then decoding against
# dev-out/s6-prev (main at d7861cd).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 dev-out/test-cuda --test-threads=1 linear tensor_core 2>&1 | grep -E "test |test result|FAILED|panicked" | head
timeout 100 dev-out/test-cuda_decode --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked" -A5 | head
for bin in s6-prev s6; do
  echo "== $bin"
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 2 2>&1 | grep graph
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
done
date -u
