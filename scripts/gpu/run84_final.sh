#!/bin/bash
# GPU run 84 (session 21): Nsight Compute on the two scan kernels the goals still wait on (the
# d_state-16 forward in bf16 at the benchmark's shape, and n16r8 with its checkpoints given at
# 130M training's), then every CUDA test with the session's final build.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
ncu_scan fwd_bf16 's6_scan_n16_bf16_v4c16t64' --dtype bf16 --scan-seqlen 2048
ncu_scan bwd_n16r8 's6_scan_bwd_n16r8' --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
date -u
run_cuda_tests
date -u
