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
# What the scan backward's first pass (a forward over the sequence writing the chunk checkpoints)
# costs: the kernel with it skipped (S6_SCAN_BWD_SKIP_FWD=1, this branch only: wrong gradients).
# If it is most of the 130M layer's 2.2 ms, the training forward could write the checkpoints.
sb() { timeout 60 dev-out/s6 bench scan --device cuda --backward --repeats 3 --scan-seqlen 2048 "$@" 2>&1 | grep -E "^scan backward|rror"; }
for k in n16r8 n16p; do
  for skip in 0 1; do
    echo "$k, S6_SCAN_BWD_SKIP_FWD=$skip"
    S6_SCAN_BWD=$k S6_SCAN_BWD_SKIP_FWD=$skip sb --scan-batch 16 --scan-d-inner 1536
    S6_SCAN_BWD=$k S6_SCAN_BWD_SKIP_FWD=$skip sb
  done
done
date -u
