#!/bin/bash
# GPU run 64 (session 16): right after run 63 on the same machine. Decoding at 130M and 1.4B,
# batches 1 / 16 / 128 (the goals are H200 figures; no H200 decoding figure since session 11),
# then where 1.4B prefill of 128 × 2048 and a 130M training step (batch 16) spend their time
# (`--profile`, each op alone), then a batch-1 130M decoding profile.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
for p in mamba-130m mamba-1.4b; do
  dev-out/s6 bench decode --device cuda --dtype bf16 --preset $p --batch 1,16,128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
P=prefill; dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 --profile > $OUT/prof-$P.log 2>&1; grep -vE "^\s*$" $OUT/prof-$P.log | grep -A32 "^profile (each"
date -u
P=train; dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile > $OUT/prof-$P.log 2>&1; grep -vE "^\s*$" $OUT/prof-$P.log | grep -A32 "^profile (each"
date -u
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 64 --repeats 1 --profile 2>&1 | tail -30
date -u
