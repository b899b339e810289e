#!/bin/bash
# GPU run 69 (session 18): after run 68 — the cross-entropy's bf16 entry given the row cache's
# shared memory (run 68: CUDA_ERROR_INVALID_VALUE at vocab 50280), the training tests with the
# activation copies back at their default, the decoding tests with prefill's storage on by default;
# 130M and (unless SHORT=1, for less device time) 1.4B training with S6_BF16_STORAGE_TRAIN=0/1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t train - test-cuda_train
tr() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
presets=("mamba-130m 16")
[ "${SHORT:-0}" = 1 ] || presets+=("mamba-1.4b 8")
for p in "${presets[@]}"; do
  set -- $p
  for s in 0 1; do echo "$1 S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset $1 --batch $2 --seqlen 2048 --repeats 2; done
  date -u
done
