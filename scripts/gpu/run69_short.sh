#!/bin/bash
# run69.sh without 1.4B training (less device time).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t train - test-cuda_train
tr() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
for s in 0 1; do echo "S6_BF16_STORAGE_TRAIN=$s"; S6_BF16_STORAGE_TRAIN=$s tr --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
date -u
