#!/bin/bash
# GPU run 94 (session 24): main's build (80b3327, whose single chunk-load loop of the scan backward
# had not run on a GPU): every CUDA test, the goals' figures on whatever card the call gets (the
# goals are set on an H200), and where 1.4B prefill's time goes now (`--profile`).
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
echo "== prefill"
timeout 80 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill|rror"
timeout 120 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 --profile > $OUT/prefill_profile.txt 2>&1; tail -40 $OUT/prefill_profile.txt
date -u
echo "== scan"
b() { timeout 60 dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan|rror" | sed 's/  */ /g'; }
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
b --repeats 3 --backward --scan-seqlen 2048
echo "== train"
train_bench s6 --preset mamba-130m --batch 16
train_bench s6 --preset mamba-130m --batch 16 --recompute none
train_bench s6 --preset mamba-1.4b --batch 8
date -u
