#!/bin/bash
# GPU run 68 (session 18): session 17's bf16 storage (prefill's activations held in bf16 alone)
# and this session's training changes (each block's input residual kept without a copy:
# add_rmsnorm_into; the head's gradient held in bf16 alone under S6_BF16_STORAGE=1) — every CUDA
# test, then prefill and training side by side with S6_BF16_STORAGE=0/1.
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
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-130m --batch 64 --seqlen 2048 --repeats 3; done
for s in 1 0; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s tr --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2; done
date -u
