#!/bin/bash
# GPU run 95c (session 24): the least of run95 that decides anything, for the last minutes of
# device time: the fused x_proj's test, batch-1 decoding with the switches off and on, and
# cuda_decode with both on.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t xscan - test-cuda_decode xscan_mixer_step_equals_the_gemv_step
dec() { timeout 40 dev-out/s6 bench decode --device cuda --dtype bf16 --batch 1 --repeats 2 "$@" 2>&1 | grep -E "^decode|rror"; }
for xp in 0/0 1/0 1/2 0/2; do
  echo "-- S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/}"
  S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/} dec --preset mamba-130m --tokens 128
  S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/} dec --preset mamba-1.4b --tokens 64
done
date -u
export S6_PREFETCH_NEXT=2; t decode_xscan S6_XSCAN=1 test-cuda_decode; unset S6_PREFETCH_NEXT
date -u
