#!/bin/bash
# GPU run 70 (session 19): the one-kernel block step (kernels/layer_step.cu) first — its test
# alone (a grid-barrier hang ends at the timeout), then batch-1 decoding with S6_LAYER_STEP=0/1
# side by side — then run 69's checks: 130M training with S6_BF16_STORAGE_TRAIN=0/1, the decoding
# and training tests (those with S6_BF16_STORAGE_TRAIN=1), 1.4B training (with SHORT=0); last, profiles of 1.4B decoding at batch 128
# and of a 130M training step.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
timeout 60 dev-out/test-cuda_decode --test-threads=1 layer_step_kernel > $OUT/layer.log 2>&1; rc=$?
echo "layer exit $rc"; grep -E "test result|panicked" -A6 $OUT/layer.log | head -20
LS=1; [ $rc = 0 ] || LS=0  # the layer step's benchmarks and tests only if its test passed
dec() { timeout 60 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | tail -4; }
for p in "mamba-130m 128" "mamba-1.4b 64"; do
  set -- $p
  for s in 0 $LS 0 $LS; do echo "$1 S6_LAYER_STEP=$s"; S6_LAYER_STEP=$s dec --preset $1 --batch 1 --tokens $2 --repeats 3; done
  [ $LS = 1 ] && { echo "$1, two blocks per SM"; S6_LAYER_STEP=1 S6_LAYER_STEP_BLOCKS_PER_SM=2 dec --preset $1 --batch 1 --tokens $2 --repeats 3; }
done
date -u
tr() { timeout 100 dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
for s in 0 1; do echo "130M S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
t decode - test-cuda_decode
[ $LS = 1 ] && t decode_ls S6_LAYER_STEP=1 test-cuda_decode bf16
t train_st S6_BF16_STORAGE_TRAIN=1 test-cuda_train
date -u
if [ "${SHORT:-1}" != 1 ]; then
  for s in 0 1; do echo "1.4B S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2; done
fi
date -u
# Where the time goes (each op alone between synchronizations).
timeout 90 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 8 --repeats 1 --profile 2>&1 | tail -30
timeout 90 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile 2>&1 | tail -40
date -u
