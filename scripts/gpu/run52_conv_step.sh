#!/bin/bash
# GPU run 52 (session 12). Against s6-prev (main 89436a8): the decoding conv step with one step
# per thread, float4 from 16 sequences on (S6_CONV_STEP_VEC4 sets where); the conv writing u's
# bf16 copy for x_proj; RMSNorm with a warp per row from 9 rows (S6_NORM_WARP=0: the old kernel);
# bf16 activation copies on by default except in training (S6_ACT_BF16 unset; 0 / 1 force).
# All four CUDA test binaries first; then Tiny Shakespeare, second round around run 51's best
# (8 x 320, 700 steps, weight decay 0.3: 1.4277 at step 490), the lowest validation loss's model
# kept in $OUT/winner (the only files that come back).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for n in test-cuda test-cuda_decode test-cuda_backward test-cuda_train; do
  timeout 150 dev-out/$n --test-threads=1 > /tmp/$n.log 2>&1; echo "$n exit $?"
  grep -E "test result" /tmp/$n.log; grep -E "FAILED|panicked" -A8 /tmp/$n.log | head -30
done
date -u
bench() {  # label, then env assignments; the binary in $B; 130M too when $SMALL is set
  echo "== $*"
  [ -n "$SMALL" ] && env "${@:2}" dev-out/$B bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 1 2>&1 | grep graph
  env "${@:2}" dev-out/$B bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
  env "${@:2}" dev-out/$B bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill"
}
SMALL=1 B=s6-prev bench s6-prev S6_ACT_BF16=0
SMALL=1 B=s6 bench s6-default
date -u
D=dev-out/tinyshakespeare.txt
common="--data $D --batch-size 32 --seq-len 256 --val-fraction 0.1 --eval-batches 40 --seed 0 --device cuda --dtype bf16 --save-dtype bf16 --lr 3e-3 --min-lr 3e-4 --warmup-steps 50 --keep-best"
mkdir -p /tmp/sh
for run in 8x320-700-0.3 8x320-500-0.3 8x320-600-0.5 8x320-700-0.5 6x384-700-0.3 10x288-700-0.3; do
  IFS=- read cfg steps wd <<< "$run"; L=${cfg%x*}; W=${cfg#*x}
  o=/tmp/sh/$run
  dev-out/s6 train $common --out $o --n-layer $L --d-model $W --steps $steps --weight-decay $wd \
    --eval-every $(( steps / 10 )) --metrics $o/metrics.jsonl > $o.log 2>&1
  echo "$run: $(grep -E '^best' $o.log) ($(grep -E '^training' $o.log | grep -oE '[0-9.]+M parameters'))"
done
win=$(for f in /tmp/sh/*.log; do v=$(sed -nE 's/^best: val_loss ([0-9.]+).*/\1/p' $f); [ -n "$v" ] && echo "$v ${f%.log}"; done | sort -n | head -1)
echo "lowest: $win"; w=${win#* }
mkdir -p $OUT/winner && cp $w/best/* $w/metrics.jsonl $w/loss.svg $OUT/winner/ && cp $w.log $OUT/winner/train.log
date -u
B=s6 bench s6-copies-off S6_ACT_BF16=0
B=s6 bench s6-old-norm S6_NORM_WARP=0
echo "== s6 S6_CONV_STEP_VEC4=1000000 (one channel per thread at every batch)"
S6_CONV_STEP_VEC4=1000000 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
# The copies' default: off while training keeps activations (peak memory as with 0).
for act in unset 1; do
  echo "== s6 train S6_ACT_BF16=$act"
  ( [ $act = unset ] && unset S6_ACT_BF16 || export S6_ACT_BF16=$act
    dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train" )
done
echo "== s6 batch 1"
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 128 --repeats 2 2>&1 | grep graph
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1 --tokens 64 --repeats 2 2>&1 | grep graph
date -u
