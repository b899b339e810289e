#!/bin/bash
# GPU run 70 (session 19): the one-kernel block step (kernels/layer_step.cu) first — its test
# alone (a grid-barrier hang ends at the timeout), then batch-1 decoding with S6_LAYER_STEP=0/1
# side by side — then run 69's checks: the decoding and training tests, 130M (and unless SHORT=1,
# 1.4B) training with S6_BF16_STORAGE_TRAIN=0/1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t layer - test-cuda_decode layer_step_kernel
dec() { timeout 60 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | tail -5; }
for p in "mamba-130m 128" "mamba-1.4b 64"; do
  set -- $p
  for s in 0 1 0 1; do echo "$1 S6_LAYER_STEP=$s"; S6_LAYER_STEP=$s dec --preset $1 --batch 1 --tokens $2 --repeats 3; done
done
echo "130M, two blocks per SM"; S6_LAYER_STEP=1 S6_LAYER_STEP_BLOCKS_PER_SM=2 dec --preset mamba-130m --batch 1 --tokens 128 --repeats 3
echo "1.4B, two blocks per SM"; S6_LAYER_STEP=1 S6_LAYER_STEP_BLOCKS_PER_SM=2 dec --preset mamba-1.4b --batch 1 --tokens 64 --repeats 3
date -u
t decode - test-cuda_decode
t decode_ls S6_LAYER_STEP=1 test-cuda_decode bf16
t train - test-cuda_train
tr() { timeout 100 dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
presets=("mamba-130m 16")
[ "${SHORT:-0}" = 1 ] || presets+=("mamba-1.4b 8")
for p in "${presets[@]}"; do
  set -- $p
  for s in 0 1; do echo "$1 S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset $1 --batch $2 --seqlen 2048 --repeats 2; done
  date -u
done
# Where 1.4B decoding at batch 128 spends its time now (each op alone between synchronizations).
timeout 90 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 8 --repeats 1 --profile 2>&1 | tail -40
date -u
