#!/bin/bash
# (Historical: run in session 8. S6_STEP_LANES and the 2-lane kernel were removed after it, and
# the block step is now on by default.)
# GPU run 24, prepared in session 7 and NOT RUN (the device tool started no machine after run 23):
# the first thing for the next session with a GPU. The fused decoding block (`Backend::block_step`: RMSNorm in in_proj's
# GEMV, conv in its epilogue, residual add in out_proj's GEMV; 4 kernels per block instead of 6),
# and the scan step with 2 lanes per channel for large batches (S6_STEP_LANES), both off by default
# until this has passed; the tests turn them on themselves.
# Every CUDA test on the new binaries, then decoding side by side with s6-base (main at b487eb0).
# If the tests pass, the defaults can flip (mixer_step.rs: block_step_enabled, step_lanes).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
grep -E "^test .*block_step" $OUT/test-cuda_decode.log
for b in s6-base s6 "env S6_BLOCK_STEP=1 dev-out/s6"; do
  [ "${b:0:3}" = env ] || b="dev-out/$b"
  echo "== $b"
  $b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,4,8 --tokens 128 --repeats 3 2>&1 | grep graph
  $b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
# The scan step with 2 lanes per channel from 16 sequences on, against the 8 lanes of before.
for l in 8 2; do
  echo "== S6_STEP_LANES=$l"
  S6_STEP_LANES=$l dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,128 --tokens 128 --repeats 3 2>&1 | grep graph
  S6_STEP_LANES=$l dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
