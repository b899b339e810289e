#!/bin/bash
# GPU run 81 (session 21): `--recompute none` (the training forward also keeps the norm's output,
# u and Δ; the backward recomputes none of them) against light, and main's build (s6-prev);
# the tests first (cuda_train's bf16_storage_changes_no_bit_of_training now also checks that
# none gives light's bits on the GPU).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
t backward - test-cuda_backward
for r in 1 2; do
  echo "s6-prev 130M"; train_bench s6-prev --preset mamba-130m --batch 16
  echo "s6 130M light"; train_bench s6 --preset mamba-130m --batch 16
  echo "s6 130M none"; train_bench s6 --preset mamba-130m --batch 16 --recompute none
done
echo "s6-prev 1.4B"; train_bench s6-prev --preset mamba-1.4b --batch 8
echo "s6 1.4B"; train_bench s6 --preset mamba-1.4b --batch 8
date -u
