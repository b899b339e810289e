#!/bin/bash
# GPU run 83 (session 21; the switch was removed after it): batch-1 decoding against the GEMV's grid target (S6_GEMV_MIN_BLOCKS:
# the warps per column group double until the grid has this many blocks; 264 before). 1.4B
# in_proj at 264 runs 512 blocks, one warp per 2 columns, 8 dependent 16-byte loads per lane
# (run 73: 19.3 µs, 1.83 TB/s); more blocks split k across more warps: fewer round trips each.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t cuda_1056 S6_GEMV_MIN_BLOCKS=1056 test-cuda linear
t decode_1056 S6_GEMV_MIN_BLOCKS=1056 test-cuda_decode
dec() { timeout 60 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^decode|rror"; }
for mb in 264 528 1056 2112 264 1056; do
  echo "== S6_GEMV_MIN_BLOCKS=$mb"
  export S6_GEMV_MIN_BLOCKS=$mb
  dec --preset mamba-1.4b --batch 1 --tokens 64 --repeats 2
  dec --preset mamba-130m --batch 1 --tokens 128 --repeats 2
done
unset S6_GEMV_MIN_BLOCKS
date -u
