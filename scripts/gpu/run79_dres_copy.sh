#!/bin/bash
# GPU run 79: the residual gradient's bf16 copy written by the RMSNorm backward (the next block's
# out_proj backward products no longer cast it: 78 µs per layer at 130M, run 76). Tests, then
# training side by side with s6-prev (run 78's build).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
tr() { local bin=$1; shift; timeout 100 dev-out/$bin bench train --device cuda --dtype bf16 --seqlen 2048 --repeats 2 "$@" 2>&1 | grep -E "^train|rror"; }
for r in 1 2; do
  for bin in s6-prev s6; do echo "$bin 130M"; tr $bin --preset mamba-130m --batch 16; done
done
for bin in s6-prev s6; do echo "$bin 1.4B"; tr $bin --preset mamba-1.4b --batch 8; done
date -u
