#!/bin/bash
# GPU run 74: the goals' figures on the card they are set on (an H200, ../shared/docs/TARGETS.md),
# with the current main (bf16 storage in training now on by default), the decisive ones first:
# batch-1 and batch-128 decoding, 1.4B prefill, 130M and 1.4B training, the scan forward and
# backward at the goal's L. Training storage off beside on, in the same call.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
dec() { timeout 80 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^decode|rror"; }
echo "== decode"
dec --preset mamba-130m --batch 1 --tokens 128 --repeats 3
dec --preset mamba-1.4b --batch 1 --tokens 64 --repeats 3
dec --preset mamba-1.4b --batch 128 --tokens 32 --repeats 2
dec --preset mamba-130m --batch 128 --tokens 32 --repeats 2
echo "== prefill"
timeout 80 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill|rror"
date -u
tr() { timeout 120 dev-out/s6 bench train --device cuda --dtype bf16 --seqlen 2048 --repeats 2 "$@" 2>&1 | grep -E "^train|rror"; }
echo "== train"
tr --preset mamba-130m --batch 16
S6_BF16_STORAGE_TRAIN=0 tr --preset mamba-130m --batch 16
tr --preset mamba-1.4b --batch 8
date -u
echo "== scan"
b() { timeout 60 dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan|rror" | sed 's/  */ /g'; }
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
b --repeats 5 --scan-seqlen 512,2048,8192,32768
b --repeats 3 --backward --scan-seqlen 512,2048,8192
date -u
