#!/bin/bash
# GPU run 67 (session 17): prefill's activations held in bf16 alone (Backend::allow_bf16_storage:
# the norm, in_proj, the conv, dt_proj and the scan write bf16 only; the conv and the scan's x16
# entries read bf16) — every CUDA test, then 1.4B and 130M prefill side by side with
# S6_BF16_STORAGE=0/1, 130M training (x_proj's dx accumulated by the GEMM), the scan forward at
# the goal's L, Nsight Compute on the forward, and a profile of 1.4B decoding at batch 128.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t cuda - test-cuda
t backward - test-cuda_backward
t train - test-cuda_train
pf() { dev-out/s6 bench prefill --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^prefill"; }
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-130m --batch 64 --seqlen 2048 --repeats 3; done
dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
b() { dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192
date -u
# Where 1.4B decoding at batch 128 spends its step (every op timed alone; no graph).
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 16 --repeats 1 --profile 2>&1 | grep -vE "^\s*$" | head -70
date -u
ncu_scan fwd-bf16 s6_scan_n16_bf16 --dtype bf16 --scan-seqlen 2048
date -u
for s in 1 0; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
