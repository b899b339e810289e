#!/bin/bash
# GPU run 28 (session 8): the L2 prefetch rule (S6_PREFETCH=small: only products whose weights
# take at most an eighth of the L2) against none (the default) and all, decoding at batch 1.
# Not run yet: session 8's device time ran out on failed starts.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for p in 0 small 1; do
  echo "== S6_PREFETCH=$p"
  S6_PREFETCH=$p dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 128 --repeats 3 2>&1 | grep graph
  S6_PREFETCH=$p dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
