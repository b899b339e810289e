#!/bin/bash
# GPU run 67, least form (for a call of ~5 minutes): the decoding/prefill tests (bf16 storage's
# among them), the linear_backward and Mamba gradient tests (x_proj's dx accumulated), then 1.4B
# prefill side by side with S6_BF16_STORAGE=0/1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t train - test-cuda_train linear_backward mamba
pf() { dev-out/s6 bench prefill --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^prefill"; }
for s in 0 1; do echo "S6_BF16_STORAGE=$s"; S6_BF16_STORAGE=$s pf --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1; done
date -u
t cuda - test-cuda
