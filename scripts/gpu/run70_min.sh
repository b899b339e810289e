#!/bin/bash
# run70.sh in less device time: the layer step's test and batch-1 decoding with it off and on,
# 130M training with S6_BF16_STORAGE_TRAIN=0/1, and the tests that the two defaults would change.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
timeout 60 dev-out/test-cuda_decode --test-threads=1 layer_step_kernel > $OUT/layer.log 2>&1; rc=$?
echo "layer exit $rc"; grep -E "test result|panicked" -A6 $OUT/layer.log | head -20
LS=1; [ $rc = 0 ] || LS=0
dec() { timeout 50 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | tail -3; }
for p in "mamba-130m 128" "mamba-1.4b 16"; do
  set -- $p
  for s in 0 $LS; do echo "$1 S6_LAYER_STEP=$s"; S6_LAYER_STEP=$s dec --preset $1 --batch 1 --tokens $2 --repeats 2; done
done
t train_st S6_BF16_STORAGE_TRAIN=1 test-cuda_train
tr() { timeout 60 dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
for s in 0 1; do echo "130M S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
date -u
[ $LS = 1 ] && t decode_ls S6_LAYER_STEP=1 test-cuda_decode bf16
date -u
