#!/bin/bash
# GPU run 66 (session 16): the final build (the forward's shape rule by waves, v4c64t16 removed):
# the scan, decoding and training tests, the forward at the goal's L and at 1.4B prefill's shape,
# 1.4B prefill, then Nsight Compute profiles of the forward and the backward.
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
# Where the forward's time goes now (the next target: bf16 at L = 2048 is 1.89× the official,
# 0.155 ms needed for 2×): Nsight Compute on the bf16 forward at B=4 D=2048 and on n16r8.
ncu_scan fwd-bf16 s6_scan_n16_bf16 --dtype bf16 --scan-seqlen 2048
ncu_scan bwd-n16r8 s6_scan_bwd_n16r --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
date -u
