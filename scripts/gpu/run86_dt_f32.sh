#!/bin/bash
# GPU run 86 (prepared in session 21, not run yet; branch wip/dt-f32-large-batch, stacked on
# wip/scan-bwd-slices): the large-batch decoding step's dt_proj product in fp32 (S6_DT_F32=1)
# against the bf16 product with its input cast (run 75: cast 3.1 + product 5.0 µs of ~87 per
# layer at 1.4B, batch 128). The test first, then decoding at 16, 64 and 128 sequences, the two
# settings alternately, two rounds, main's build (s6-prev) beside them: the branch's s6 also holds
# the block-per-row norm's elements in registers (wip/norm-regs, no switch), which S6_DT_F32=0
# against s6-prev measures.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t dt_f32 - test-cuda_decode dt_proj_in_fp32
dec() { timeout 80 dev-out/${BIN:-s6} bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "device, graph\)|rror"; }
for r in 1 2; do
  echo "== s6-prev (main)"
  BIN=s6-prev dec --preset mamba-1.4b --batch 16,64,128 --tokens 32 --repeats 2
  BIN=s6-prev dec --preset mamba-130m --batch 128 --tokens 32 --repeats 2
  for v in 0 1; do
    echo "== S6_DT_F32=$v"
    S6_DT_F32=$v dec --preset mamba-1.4b --batch 16,64,128 --tokens 32 --repeats 2
    S6_DT_F32=$v dec --preset mamba-130m --batch 128 --tokens 32 --repeats 2
  done
done
date -u
