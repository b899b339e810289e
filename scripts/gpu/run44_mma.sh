#!/bin/bash
# GPU run 44 (session 11): the tensor-core kernel for bf16 products with few columns or a short k
# (kernels/mma.cu; x_proj and dt_proj when decoding at 9-256 sequences). Every CUDA test (the
# new test of the kernel included), then decoding side by side with the previous build
# (dev-out/s6-prev, main at d7861cd), the split length at 1.4B batch 128, and prefill / training
# with the kernel at every row count (S6_MMA_ROWS=huge; off by default there).
# (S6_MMA_SPLIT_STEPS existed only in the build of this call.)
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
date -u
for bin in s6-prev s6 s6-prev s6; do
  echo "== $bin"
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 3 2>&1 | grep graph
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
for st in 4 8 32; do
  echo "== S6_MMA_SPLIT_STEPS=$st"
  S6_MMA_SPLIT_STEPS=$st dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 64 --repeats 2 2>&1 | grep graph
  S6_MMA_SPLIT_STEPS=$st dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
for rows in 256 1000000000; do
  echo "== S6_MMA_ROWS=$rows"
  S6_MMA_ROWS=$rows dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
  S6_MMA_ROWS=$rows dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
date -u
