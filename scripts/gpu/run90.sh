#!/bin/bash
# GPU run 90 (session 23): the final build's tests (S6_DT_FUSED removed), then the goals' figures
# (on whatever card the call gets; the goals are set on an H200): batch-1 and batch-128 decoding,
# 1.4B prefill, the scan forward and backward at the goal's L, 130M and 1.4B training.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
date -u
dec() { timeout 80 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^decode|rror"; }
echo "== decode"
dec --preset mamba-130m --batch 1 --tokens 128 --repeats 3
dec --preset mamba-1.4b --batch 1 --tokens 64 --repeats 3
dec --preset mamba-1.4b --batch 128 --tokens 32 --repeats 2
dec --preset mamba-130m --batch 128 --tokens 32 --repeats 2
echo "== prefill"
timeout 80 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill|rror"
date -u
echo "== scan"
b() { timeout 60 dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan|rror" | sed 's/  */ /g'; }
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
b --repeats 3 --backward --scan-seqlen 512,2048,8192
date -u
echo "== train"
train_bench s6 --preset mamba-130m --batch 16
train_bench s6 --preset mamba-1.4b --batch 8
date -u
