#!/bin/bash
# GPU run 69 (session 18): after run 68 — the cross-entropy's bf16 entry given the row cache's
# shared memory (run 68: CUDA_ERROR_INVALID_VALUE at vocab 50280), the training tests with the
# activation copies back at their default, the decoding tests with prefill's storage on by default;
# 130M and 1.4B training with S6_BF16_STORAGE_TRAIN=0/1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
t decode - test-cuda_decode
tr() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
for s in 0 1; do echo "S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
date -u
for s in 0 1; do echo "S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2; done
date -u
