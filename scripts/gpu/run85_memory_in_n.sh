#!/bin/bash
# GPU run 85 (prepared in session 21, not run yet; branch wip/scan-bwd-slices): training memory
# and speed against d_state (issue 6: "training memory must stay flat in N"). What grows with N
# is transient, per layer: the scan backward's chunk checkpoints (B·D·L/chunk·N floats) and its
# per-block dB/dC partials (blocks · rows · 2N floats): 0.8 GB at 130M's shape with N = 16, 4.8 GB
# with N = 64. The branch runs the backward in slices of the batch past a 2 GiB budget
# (S6_SCAN_BWD_SCRATCH_MB). First its tests (slices against the CPU, and in training against one
# launch), then 130M's shape with N = 16, 32, 64 (scripts/gpu/configs/), batch 16 × 2048, bf16:
# s6-prev (main) against s6 (the branch); then the scan backward alone at each N.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t slices - test-cuda_backward slices
t slices_r8 S6_SCAN_BWD=n16r8 test-cuda_backward slices
t train_slices - test-cuda_train slices
t backward - test-cuda_backward
for n in 16 32 64; do
  for bin in s6-prev s6; do
    echo "== N=$n, $bin"; train_bench $bin --batch 16 --config scripts/gpu/configs/mamba-130m-n$n.json
  done
  scan_bwd_bench --scan-batch 16 --scan-d-inner 1536 --scan-d-state $n
done
echo "== N=64, s6, --recompute full"; train_bench s6 --batch 16 --config scripts/gpu/configs/mamba-130m-n64.json --recompute full
date -u
