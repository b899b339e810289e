#!/bin/bash
# GPU run 67, short form (for a call with little device time left): the tests that cover
# session 17's changes (decoding and prefill, every CUDA op, training), then 1.4B prefill and 130M
# training side by side with S6_BF16_STORAGE=0/1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t cuda - test-cuda
t train - test-cuda_train
pf() { dev-out/s6 bench prefill --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^prefill"; }
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
for s in 1 0; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
date -u
