#!/bin/bash
# GPU run 51 (session 12): run 49 showed Tiny Shakespeare overfits after ~600 steps of 32 × 256
# bytes at every size, so a long cosine schedule leaves the best model at a high learning rate.
# Here: short cosine schedules (the best point at the schedule's end), three sizes small enough to
# bundle, two lengths, two weight decays; --keep-best as in run 49, the bundled model's split and
# evaluation. Then run 50's checks of the tensor-core kernel's unsplit path (its test; prefill and
# training with it for every row count).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
D=dev-out/tinyshakespeare.txt
common="--data $D --batch-size 32 --seq-len 256 --val-fraction 0.1 --eval-batches 40 --seed 0 --device cuda --dtype bf16 --save-dtype bf16 --lr 3e-3 --min-lr 3e-4 --warmup-steps 50 --keep-best"
for cfg in 4x256 6x320 8x320; do
  L=${cfg%x*}; W=${cfg#*x}
  for steps in 400 700; do
    for wd in 0.1 0.3; do
      o=$OUT/sh-$cfg-$steps-$wd
      dev-out/s6 train $common --out $o --n-layer $L --d-model $W --steps $steps --weight-decay $wd \
        --eval-every $(( steps / 10 )) --metrics $o/metrics.jsonl > $o.log 2>&1
      echo "$cfg steps $steps wd $wd: $(grep -E '^best' $o.log)"
      rm -f $o/training_state.safetensors $o/model.safetensors $o/loss.svg
    done
  done
done
# Keep the lowest validation loss's best model (and every run's log and metrics); drop the rest.
win=$(for f in $OUT/sh-*.log; do v=$(sed -nE 's/^best: val_loss ([0-9.]+).*/\1/p' $f); [ -n "$v" ] && echo "$v ${f%.log}"; done | sort -n | head -1)
echo "lowest: $win"
w=${win#* }
[ -n "$w" ] && cp -r $w/best $OUT/winner && cp $w/metrics.jsonl $w.log $OUT/winner/
rm -rf $OUT/sh-*/best
date -u
timeout 150 dev-out/test-cuda --test-threads=1 tensor_core 2>&1 | grep -E "test result|FAILED|panicked" -A6 | head -12
for rows in 0 1000000000; do
  echo "== S6_MMA_ROWS=$rows"
  S6_MMA_ROWS=$rows dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
  S6_MMA_ROWS=$rows dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
date -u
