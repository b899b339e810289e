#!/bin/bash
# GPU run 27 (session 8): the length curriculum that carried S6 to 16-token selective copying at
# L = 4096 on the CPU in session 7 (docs/RESULTS.md; models/selective-copying-s6/README.md), run
# three times side by side: the time-invariant ablation (lti, seed 0, the S6 run's seed) and S6
# with seeds 1 and 2. Each: L = 256 for 25,000 steps of 32 at lr 1e-3, then 1024 for 1,250 steps
# of 16 at lr 1e-3, then 4096 for 1,500 steps of 8 at lr 1e-4, evaluated on 1,024 samples at
# 256, 1024, 4096 and 16384. Binary: dev-out/s6.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
R="--items 16 --lr-schedule constant --betas 0.9,0.999 --eval-every 2500 --eval-samples 64"
curriculum() { # variant seed name
  local S="dev-out/s6 task selective-copying --device cuda --variant $1 --seed $2 $R"
  $S --seq-len 256 --batch-size 32 --steps 25000 --lr 1e-3 --save $OUT/$3-256 --eval-lengths 256 --plot $OUT/$3-256.svg > $OUT/$3-256.log 2>&1
  $S --load $OUT/$3-256 --seq-len 1024 --batch-size 16 --steps 1250 --lr 1e-3 --save $OUT/$3-1024 --eval-lengths 1024 --plot $OUT/$3-1024.svg > $OUT/$3-1024.log 2>&1
  dev-out/s6 task selective-copying --device cuda --variant $1 --seed $2 --items 16 --lr-schedule constant --betas 0.9,0.999 \
    --eval-every 250 --eval-samples 64 --load $OUT/$3-1024 --seq-len 4096 --batch-size 8 --steps 1500 --lr 1e-4 \
    --save $OUT/$3-4096 --eval-lengths 256,1024,4096 --json $OUT/$3-4096.json --plot $OUT/$3-4096.svg > $OUT/$3-4096.log 2>&1
  # The final evaluation on 1,024 samples, as the CPU model's.
  dev-out/s6 task selective-copying --device cuda --variant $1 --items 16 --load $OUT/$3-4096 --steps 0 --seed 99 \
    --eval-lengths 256,1024,4096,16384 --eval-samples 1024 --json $OUT/$3-eval.json --plot $OUT/$3-eval.svg > $OUT/$3-eval.log 2>&1
}
curriculum lti 0 lti-seed0 &
curriculum s6 1 s6-seed1 &
curriculum s6 2 s6-seed2 &
wait
for f in $OUT/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -E "step|%|s\)" | tail -8; done
rm -f $OUT/*/model.safetensors.tmp*
date -u
