#!/bin/bash
# GPU run 22 (prepared in session 6, which had no GPU): first every CUDA test (commits 862cd22 and
# d0da30d of session 5 have not run on a GPU yet), then the paper's induction-heads recipe on the
# GPU (constant lr 1e-3, batch 8, Adam betas 0.9/0.999, 204,800 steps at L = 256; session 6 ran it
# on the CPU) and the same recipe for selective copying at the paper's L = 4096, both saving the
# model every 5,000 steps so that a cut-off run can be evaluated later with --load --steps 0.
# Binaries in dev-out/ (s6, test-*), built with --features cuda.
. "$(dirname "$0")/cuda_tests.sh"
date -u
run_cuda_tests
L="2^6,2^7,2^8,2^9,2^10,2^11,2^12,2^13,2^14,2^15,2^16,2^17,2^18,2^19,2^20"
RECIPE="--batch-size 8 --lr 1e-3 --lr-schedule constant --betas 0.9,0.999 --eval-every 5000"
timeout 420 dev-out/s6 task induction-heads --device cuda --seq-len 256 --steps 204800 $RECIPE \
  --save $OUT/ih-model --eval-lengths $L --eval-samples 64 --eval-tokens 8388608 \
  --json $OUT/ih.json --plot $OUT/ih.svg > $OUT/ih.log 2>&1 &
for v in s6 lti; do
  timeout 420 dev-out/s6 task selective-copying --device cuda --variant $v --items 16 --seq-len 4096 \
    --steps 400000 $RECIPE --save $OUT/sc-$v-model --eval-samples 256 --json $OUT/sc-$v.json > $OUT/sc-$v.log 2>&1 &
done
wait
# A run cut off by the timeout left its last saved model: evaluate it with
#   s6 task ... --load $OUT/<model> --steps 0 --eval-lengths ...
tail -5 $OUT/ih.log $OUT/sc-*.log
date -u
