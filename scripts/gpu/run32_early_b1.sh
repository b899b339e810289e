#!/bin/bash
# GPU run 32 (session 9): the early weight loads only where they paid in runs 30-31 (batch 1: the
# GEMV with one 16-byte load per lane before the PDL wait, the scan step's `_b1` entry); larger
# batches run the plain loops again. Decoding and CUDA tests, then decoding side by side with the
# previous binary (s6-prev, S6_PREFETCH=small), twice in alternation.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for n in test-cuda_decode test-cuda; do timeout 150 dev-out/$n --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"; done
for round in 1 2; do
for b in "env S6_PREFETCH=small dev-out/s6-prev" dev-out/s6; do
  echo "== $b (round $round)"
  $b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3 2>&1 | grep graph
  $b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
done
date -u
