#!/bin/bash
# GPU run 89, call A (session 23): the tests, then the scan backward beside main.
# Binaries (dev-pack/bins.tar.xz): dev-out/s6 (this session's build), dev-out/s6-main (main at
# ecf0bdf, session 22's last), dev-out/s6-prev (e886d58, before the backward's slices and y16),
# the CUDA test binaries of this build.
# 1. Tests: bf16_storage_changes_no_bit_of_training (now also at d_state 64), the fused dt step
#    with its coalesced lanes, the scan backward's tests, then every CUDA test binary.
# 2. The scan backward (q as dL/dh_{t-1} times h_{t-1}; the chunk loads' offsets in 32 bits) beside
#    main at the goal's shape and at 130M's and 1.4B's training shapes, two rounds.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t storage - test-cuda_train bf16_storage_changes_no_bit
t dt_fused - test-cuda_decode dt_proj_inside
run_cuda_tests
date -u
sb() { local bin=$1; shift; timeout 60 dev-out/$bin bench scan --device cuda --backward --repeats 5 --scan-seqlen 2048 "$@" 2>&1 | grep -E "^scan backward|rror" | sed 's/  */ /g'; }
for r in 1 2; do
  for bin in s6-main s6; do
    echo "== $bin"
    sb $bin
    sb $bin --scan-batch 16 --scan-d-inner 1536
    sb $bin --scan-batch 8 --scan-d-inner 4096
  done
done
date -u
