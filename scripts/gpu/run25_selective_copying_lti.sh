#!/bin/bash
# GPU run 25, prepared in session 7 and not run: the time-invariant ablation through the same
# length curriculum that carried S6 to 16-token selective copying at L = 4096 on the CPU
# (docs/RESULTS.md; models/selective-copying-s6/README.md): L = 256 for 25,000 steps of 32, then
# 1024 for 1,250 steps of 16, then 4096 for 1,500 steps of 8 at lr 1e-4, evaluated at 4096 on 1,024
# samples as the S6 model was. Beside it, S6 from scratch at L = 4096 with the paper's batch of 64
# for what is left of the call, saving every 2,500 steps. Binaries in dev-out/ (s6).
. "$(dirname "$0")/cuda_tests.sh"
date -u
R="--items 16 --lr-schedule constant --betas 0.9,0.999 --eval-every 2500"
timeout ${SCRATCH_SECONDS:-420} dev-out/s6 task selective-copying --device cuda --items 16 --seq-len 4096 --batch-size 64 \
  --steps 400000 --lr 1e-3 --lr-schedule constant --betas 0.9,0.999 --eval-every 2500 --eval-samples 256 \
  --save $OUT/s6-4096-scratch > $OUT/s6-4096-scratch.log 2>&1 &
S="dev-out/s6 task selective-copying --device cuda --variant lti"
$S $R --seq-len 256 --batch-size 32 --steps 25000 --lr 1e-3 --save $OUT/lti-256 --eval-lengths 256 > $OUT/lti-256.log 2>&1
$S $R --load $OUT/lti-256 --seq-len 1024 --batch-size 16 --steps 1250 --lr 1e-3 --save $OUT/lti-1024 --eval-lengths 1024 > $OUT/lti-1024.log 2>&1
$S $R --load $OUT/lti-1024 --seq-len 4096 --batch-size 8 --steps 1500 --lr 1e-4 --save $OUT/lti-4096 \
  --eval-lengths 256,1024,4096 --eval-samples 1024 --json $OUT/lti-4096.json > $OUT/lti-4096.log 2>&1
for f in lti-256 lti-1024 lti-4096; do tr '\r' '\n' < $OUT/$f.log | grep -E "step|%" | tail -12; done
wait
tr '\r' '\n' < $OUT/s6-4096-scratch.log | grep -E "step|%" | tail -20
date -u
