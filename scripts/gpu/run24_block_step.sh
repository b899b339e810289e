#!/bin/bash
# GPU run 24 (session 7): the fused decoding block (`Backend::block_step`: RMSNorm in in_proj's
# GEMV, conv in its epilogue, residual add in out_proj's GEMV; 4 kernels per block instead of 6).
# Every CUDA test on the new binaries, then decoding side by side with s6-base (main at b487eb0),
# then the step rate of `s6 task` at the paper's selective-copying length.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
grep -E "^test .*block_step" $OUT/test-cuda_decode.log
for b in s6-base s6; do
  echo "== $b"
  dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,4,8 --tokens 128 --repeats 3 2>&1 | grep graph
  dev-out/$b bench decode --device cuda --dtype f32 --preset mamba-130m --batch 1 --tokens 128 --repeats 3 2>&1 | grep graph
  dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
dev-out/s6 task selective-copying --device cuda --items 16 --seq-len 4096 --batch-size 64 --steps 300 \
  --lr 1e-3 --lr-schedule constant --eval-every 100 --eval-samples 64 --json $OUT/sc-rate.json 2>&1 | tail -4
grep -o '"train_seconds":[0-9.]*' $OUT/sc-rate.json
date -u
