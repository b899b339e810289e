#!/bin/bash
# GPU run 24, prepared in session 7 and NOT RUN (the device tool started no machine after run 23):
# the first thing for the next session with a GPU. The fused decoding block (`Backend::block_step`: RMSNorm in in_proj's
# GEMV, conv in its epilogue, residual add in out_proj's GEMV; 4 kernels per block instead of 6),
# and the scan step with 2 lanes per channel for large batches (S6_STEP_LANES), both off by default
# until this has passed; the tests turn them on themselves.
# Every CUDA test on the new binaries, then decoding side by side with s6-base (main at b487eb0).
# Then selective copying with the paper's 16 tokens, at training length 256 (batch 64, constant
# lr 1e-3), S6 and the time-invariant ablation side by side, saving every 5,000 steps, tested at
# 256, 1024 and 4096.
. "$(dirname "$0")/cuda_tests.sh"
T0=$(date +%s)
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
# The training runs take what is left of BUDGET (430 s) after the tests and benchmarks.
SC_SECONDS=$((${BUDGET:-430} - ($(date +%s) - T0)))
echo "selective copying: $SC_SECONDS s"
[ "$SC_SECONDS" -lt 60 ] && { date -u; exit 0; }
for v in s6 lti; do
  timeout $SC_SECONDS dev-out/s6 task selective-copying --device cuda --variant $v --items 16 --seq-len 256 \
    --batch-size 64 --steps 400000 --lr 1e-3 --lr-schedule constant --betas 0.9,0.999 --eval-every 5000 \
    --eval-samples 256 --eval-lengths 256,1024,4096 --save $OUT/sc16-$v-model --json $OUT/sc16-$v.json > $OUT/sc16-$v.log 2>&1 &
done
wait
tr '\r' '\n' < $OUT/sc16-s6.log | grep -E "step|%" | tail -30
tr '\r' '\n' < $OUT/sc16-lti.log | grep -E "step|%" | tail -8
date -u
