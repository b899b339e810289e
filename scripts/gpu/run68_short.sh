#!/bin/bash
# GPU run 68 (session 18): session 17's bf16 storage (prefill's activations held in bf16 alone)
# and this session's training changes — every CUDA test, 1.4B prefill and 130M training with
# S6_BF16_STORAGE=0/1 (then one switch for both). (A longer run68.sh, with 130M prefill and 1.4B
# training too, never got a machine and was removed.)
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t train - test-cuda_train
t cuda - test-cuda
t backward - test-cuda_backward
date -u
pf() { dev-out/s6 bench prefill --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^prefill|rror"; }
tr() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s tr --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
date -u
