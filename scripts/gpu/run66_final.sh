#!/bin/bash
# GPU run 66 (session 16): the final build (the forward's shape rule by waves, v4c64t16 removed):
# the scan, decoding and training tests, the forward at the goal's L and at 1.4B prefill's shape,
# 1.4B prefill.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t cuda - test-cuda
t train - test-cuda_train
t decode - test-cuda_decode
b() { dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
b --repeats 2 --dtype bf16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
date -u
