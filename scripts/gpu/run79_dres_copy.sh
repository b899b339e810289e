#!/bin/bash
# GPU run 79 (session 21; branch wip/dres-bf16-copy, the build before its review): two training changes written after session
# 20's device time ran out, against s6-prev (main's build, run 78's):
# - the residual gradient's bf16 copy written by the RMSNorm backward (the next block's out_proj
#   backward products no longer cast it: 78 µs per layer at 130M, run 76);
# - the d_state-16 scan backward's chunk checkpoints written by s6_scan_n16_ckpt* (the forward
#   kernel's recurrence, without outputs) instead of by its own first pass
#   (`S6_SCAN_BWD_CKPT`, on by default on this branch; 0 turns it off).
# Also what that first pass costs: the kernel with it skipped (S6_SCAN_BWD_SKIP_FWD=1, wrong
# gradients, a measurement only). The tests first (cuda_train's include
# bf16_storage_changes_no_bit_of_training; cuda_backward's compare with the CPU).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
t backward - test-cuda_backward
t backward_nockpt S6_SCAN_BWD_CKPT=0 test-cuda_backward
for k in n16r8 n16p; do
  for env in S6_SCAN_BWD_CKPT=0 S6_SCAN_BWD_CKPT=1 S6_SCAN_BWD_SKIP_FWD=1; do  # SKIP_FWD: removed since
    echo "$k, $env"
    (export S6_SCAN_BWD=$k $env; scan_bwd_bench --scan-batch 16 --scan-d-inner 1536; scan_bwd_bench)
  done
done
date -u
for r in 1 2; do
  echo "s6-prev 130M"; train_bench s6-prev --preset mamba-130m --batch 16
  echo "s6 130M, S6_SCAN_BWD_CKPT=0"; S6_SCAN_BWD_CKPT=0 train_bench s6 --preset mamba-130m --batch 16
  echo "s6 130M"; train_bench s6 --preset mamba-130m --batch 16
done
echo "s6-prev 1.4B"; train_bench s6-prev --preset mamba-1.4b --batch 8
echo "s6 1.4B"; train_bench s6 --preset mamba-1.4b --batch 8
date -u
