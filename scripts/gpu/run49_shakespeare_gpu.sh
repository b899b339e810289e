#!/bin/bash
# GPU run 49 (prepared in session 11, for the next one): issue 6's "retrain the bundled default
# model if the GPU gives a clearly better one". Three byte-level Mamba configs trained on the GPU,
# one after the other, on Tiny Shakespeare with the bundled model's data split and evaluation
# (last 10% held out, 40 windows of 32 × 256 bytes), each for ~140 s (steps from a 20-step
# probe), keeping the model of the lowest validation loss (--keep-best: the bigger ones overfit).
# The bundled model (4 × 256, trained on CPUs): 1.4659 nats/byte. Needs dev-out/s6 (built with
# --features cuda) and dev-out/tinyshakespeare.txt (cp ../shared/data/text/tinyshakespeare.txt).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
D=dev-out/tinyshakespeare.txt
common="--data $D --batch-size 32 --seq-len 256 --val-fraction 0.1 --eval-batches 40 --seed 0 --device cuda --dtype bf16 --save-dtype bf16"
for cfg in 4x256 6x320 8x384; do
  L=${cfg%x*}; W=${cfg#*x}
  # throughput probe (its own schedule; only the tok/s is used)
  tps=$(dev-out/s6 train $common --out /tmp/probe-$cfg --n-layer $L --d-model $W --steps 20 --warmup-steps 2 --eval-every 0 2>&1 | sed -nE 's/.* ([0-9]+) tok\/s; checkpoint.*/\1/p')
  steps=$(( ${tps:-20000} * 130 / (32 * 256) ))
  echo "$cfg: probe $tps tok/s alone -> $steps steps"
  ( dev-out/s6 train $common --out $OUT/shakespeare-$cfg --n-layer $L --d-model $W --steps $steps \
      --lr 3e-3 --min-lr 3e-4 --warmup-steps 50 --eval-every $(( steps / 40 + 1 )) --keep-best \
      --metrics $OUT/shakespeare-$cfg/metrics.jsonl > $OUT/shakespeare-$cfg.log 2>&1 )
done
date -u
for cfg in 4x256 6x320 8x384; do echo "== $cfg"; grep -E "^(training|done|best)" $OUT/shakespeare-$cfg.log; rm -f $OUT/shakespeare-$cfg/training_state.safetensors $OUT/shakespeare-$cfg/model.safetensors; done
ls -la $OUT/*/best/
