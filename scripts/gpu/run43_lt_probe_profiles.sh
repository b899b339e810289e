#!/bin/bash
# GPU run 43 (session 11): (1) scripts/gpu/lt_probe.cu, cuBLASLt's algorithms against cublasGemmEx's
# default for the decoding products at large batches (cold weights); (2) where a 130M training step
# goes now (`--profile`, after session 10's vector scan forward); (3) 1.4B training with
# `--recompute full` (memory) with the final forward rule.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
nvcc -O2 -arch=sm_90 -o /tmp/lt_probe scripts/gpu/lt_probe.cu -lcublasLt -lcublas 2>&1 | tail -3
timeout 120 /tmp/lt_probe 2>&1 | tee $OUT/lt_probe.txt | grep -E "default|best"
date -u
timeout 150 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile > $OUT/train130m_profile.txt 2>&1
grep -E "^train" $OUT/train130m_profile.txt
date -u
timeout 150 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 --recompute full 2>&1 | grep -E "^train"
date -u
