#!/bin/bash
# GPU run 99 (session 26): the d_state-16 scan backward with each step's dB/dC partials summed over
# a warp's channels on the tensor cores (`n16m8` and `n16pm`, n16r8 and n16p so changed, forced by
# S6_SCAN_BWD): their tests, the backward side by side at the three shapes, training with n16m8
# against the default; then run 98's short cut (sessions 24-25's batch-1 decoding: the cluster
# step's test, the probe, decoding under the switches) and Nsight Compute on the kernels
# (~9 minutes; the last part may not fit a call). `run99.sh short` (~4 minutes): the tests, one
# round of the backward and of training, nothing else.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t bwd_m8 S6_SCAN_BWD=n16m8 test-cuda_backward scan_backward
t bwd_pm S6_SCAN_BWD=n16pm test-cuda_backward scan_backward
t train_m8 S6_SCAN_BWD=n16m8 test-cuda_train gradients_match mamba_loss_and_grads bf16_mamba training_200_steps scan_backward_slices bf16_storage_changes
shapes() {
  scan_bwd_bench --scan-batch 16 --scan-d-inner 1536
  scan_bwd_bench --scan-batch 8 --scan-d-inner 4096
  scan_bwd_bench
}
rounds="1 2" trains="n16r8 n16m8 n16r8 n16m8"
[ "$1" = short ] && rounds=1 trains="n16r8 n16m8"
for round in $rounds; do
  for k in n16r8 n16m8 n16p n16pm; do echo "-- $k (round $round)"; (export S6_SCAN_BWD=$k; shapes); done
done
date -u
echo "== training: default (n16r8) against n16m8"
for k in $trains; do
  echo "-- $k"
  (export S6_SCAN_BWD=$k; train_bench s6 --preset mamba-130m --batch 16; train_bench s6 --preset mamba-1.4b --batch 8)
done
date -u
[ "$1" = short ] && exit 0
bash scripts/gpu/run98.sh short
(export S6_SCAN_BWD=n16r8; ncu_scan r8 s6_scan_bwd_n16r8 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048)
(export S6_SCAN_BWD=n16m8; ncu_scan m8 s6_scan_bwd_n16m8 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048)
(export S6_SCAN_BWD=n16pm; ncu_scan pm s6_scan_bwd_n16pm --backward --scan-seqlen 2048)
date -u
