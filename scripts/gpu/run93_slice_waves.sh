#!/bin/bash
# GPU run 93 (session 23): the scan backward's slice size chosen by waves of blocks (backward.rs
# scan_bwd_slice, the occupancy calculator asked): its tests (which force slices), then 130M's
# shape at d_state 64 with budgets whose fit is 4 (1,300 MB; run 89: 50,000 tok/s, the rule now
# takes 3) and 3 (the default 1 GiB; run 89: 55,000).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t slices_bwd - test-cuda_backward scan_backward_in_slices
t slices_train - test-cuda_train scan_backward_slices
tb() { timeout 100 dev-out/s6 bench train --device cuda --dtype bf16 --seqlen 2048 --repeats 3 --batch 16 --config scripts/gpu/configs/mamba-130m-n64.json 2>&1 | grep -E "^train|rror" | sed -E 's/GEMM limit.*memory//'; }
echo "== 1300 MB: $(S6_SCAN_BWD_SCRATCH_MB=1300 tb)"
echo "== default: $(tb)"
date -u
