#!/bin/bash
# GPU run 27 (session 8, first run in session 9): the length curriculum that carried S6 to 16-token selective copying at
# L = 4096 on the CPU in session 7 (docs/RESULTS.md; models/selective-copying-s6/README.md), run
# three times side by side: the time-invariant ablation (lti, seed 0, the S6 run's seed) and S6
# with seeds 1 and 2. Each: L = 256 for 25,000 steps of 32 at lr 1e-3, then 1024 for 1,250 steps
# of 16 at lr 1e-3, then 4096 for 1,500 steps of 8 at lr 1e-4, evaluated on 1,024 samples at
# 256, 1024, 4096 and 16384. Binary: dev-out/s6.
. "$(dirname "$0")/cuda_tests.sh"
# Everything is written under $W and comes back as one archive ($OUT takes at most 8 files).
W=/tmp/run27; mkdir -p $W
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
R="--items 16 --lr-schedule constant --betas 0.9,0.999 --eval-every 2500 --eval-samples 64"
curriculum() { # variant seed name
  local S="dev-out/s6 task selective-copying --device cuda --variant $1 --seed $2 $R"
  $S --seq-len 256 --batch-size 32 --steps 25000 --lr 1e-3 --save $W/$3-256 --eval-lengths 256 --plot $W/$3-256.svg > $W/$3-256.log 2>&1
  $S --load $W/$3-256 --seq-len 1024 --batch-size 16 --steps 1250 --lr 1e-3 --save $W/$3-1024 --eval-lengths 1024 --plot $W/$3-1024.svg > $W/$3-1024.log 2>&1
  dev-out/s6 task selective-copying --device cuda --variant $1 --seed $2 --items 16 --lr-schedule constant --betas 0.9,0.999 \
    --eval-every 250 --eval-samples 64 --load $W/$3-1024 --seq-len 4096 --batch-size 8 --steps 1500 --lr 1e-4 \
    --save $W/$3-4096 --eval-lengths 256,1024,4096 --json $W/$3-4096.json --plot $W/$3-4096.svg > $W/$3-4096.log 2>&1
  # The final evaluation on 1,024 samples, as the CPU model's.
  dev-out/s6 task selective-copying --device cuda --variant $1 --items 16 --load $W/$3-4096 --steps 0 --seed 99 \
    --eval-lengths 256,1024,4096,16384 --eval-samples 1024 --json $W/$3-eval.json --plot $W/$3-eval.svg > $W/$3-eval.log 2>&1
}
# Beside them, as long as the call allows: S6 trained at 4096 from the start with the paper's
# batch of 64 (constant lr 1e-3), probed every 1,000 steps.
timeout ${SCRATCH_S:-420} dev-out/s6 task selective-copying --device cuda --seed 0 --items 16 --lr-schedule constant \
  --betas 0.9,0.999 --eval-every 1000 --eval-samples 64 --seq-len 4096 --batch-size 64 --steps 400000 --lr 1e-3 \
  --eval-lengths 4096 --save $W/s6-scratch-4096 > $W/s6-scratch-4096.log 2>&1 &
pids=()
curriculum lti 0 lti-seed0 & pids+=($!)
curriculum s6 1 s6-seed1 & pids+=($!)
curriculum s6 2 s6-seed2 & pids+=($!)
wait "${pids[@]}"
for f in $W/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -E "step|%|s\)" | tail -8; done
wait
tr '\r' '\n' < $W/s6-scratch-4096.log | grep -E "step|%" | tail -20
rm -f $W/*/model.safetensors.tmp*
tar czf $OUT/run27.tgz -C /tmp run27
date -u
