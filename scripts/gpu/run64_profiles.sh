#!/bin/bash
# GPU run 64 (session 16): after runs 63 and 65 on the same machine, where time goes (`--profile`:
# each op timed alone between synchronizations): 1.4B prefill of 128 × 2048, a 130M training
# step (batch 16, L = 2048), 130M decoding at batch 1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
prof() { local n=$1; shift; dev-out/s6 bench "$@" --profile > $OUT/prof-$n.log 2>&1; grep -vE "^\s*$" $OUT/prof-$n.log | grep -A24 "^profile (each"; }
prof train train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1
date -u
prof decode decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 64 --repeats 1
date -u
prof prefill prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1
date -u
