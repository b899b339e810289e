#!/bin/bash
# GPU run 80 (session 21): the reviewed branch (checkpoints given to n16r8 only) and two small
# training kernels: s6_col_sums_finish over (32, 16) blocks (35 µs for 768 columns before, run 76)
# and the cross-entropy's shape (row cached in shared memory or read twice through L2; threads per
# block: S6_CE_ROW_CACHE / S6_CE_THREADS, measurement switches). Tests first; then the op profile's
# cross_entropy / rmsnorm_backward lines per setting; then training against s6-prev (main's build).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
t backward - test-cuda_backward
scan_bwd_bench; scan_bwd_bench --scan-batch 16 --scan-d-inner 1536
pr() { timeout 60 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile 2>&1 | grep -E "^(cross_entropy|rmsnorm_backward|linear_backward 2560|train batch)|rror"; }
for cfg in "S6_CE_ROW_CACHE=1" "S6_CE_ROW_CACHE=0 S6_CE_THREADS=1024" "S6_CE_ROW_CACHE=0 S6_CE_THREADS=512" "S6_CE_ROW_CACHE=0 S6_CE_THREADS=256"; do
  echo "== $cfg"; (export $cfg; pr)
done
date -u
for r in 1 2; do
  echo "s6-prev 130M"; train_bench s6-prev --preset mamba-130m --batch 16
  echo "s6 130M"; train_bench s6 --preset mamba-130m --batch 16
  echo "s6 130M, S6_CE_ROW_CACHE=0"; S6_CE_ROW_CACHE=0 train_bench s6 --preset mamba-130m --batch 16
done
echo "s6-prev 1.4B"; train_bench s6-prev --preset mamba-1.4b --batch 8
echo "s6 1.4B"; train_bench s6 --preset mamba-1.4b --batch 8
date -u
