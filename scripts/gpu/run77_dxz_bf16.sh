#!/bin/bash
# GPU run 77: dxz (in_proj's output gradient in training) held in bf16 alone: the scan backward
# writes its dz part and the conv backward its dx part in bf16, so in_proj's backward products
# no longer cast it (run 76: that cast took 312 µs per layer at 130M, 5.4% of the step). The
# training and backward tests, then training side by side with the previous build (s6-prev,
# 3a9ddad with bf16 training storage on by default), 130M and 1.4B.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
t backward - test-cuda_backward
for r in 1 2; do
  for bin in s6-prev s6; do echo "$bin 130M"; train_bench $bin --preset mamba-130m --batch 16; done
done
for bin in s6-prev s6; do echo "$bin 1.4B"; train_bench $bin --preset mamba-1.4b --batch 8; done
date -u
