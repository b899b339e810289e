#!/bin/bash
# GPU run 82 (session 21): where 1.4B training's step goes (batch 8 × 2048, light) and 130M's
# with --recompute none: the op-by-op profile (each op timed alone between synchronizations).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
timeout 150 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 --profile 2>&1 | grep -A40 "^profile (each"
timeout 100 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile --recompute none 2>&1 | grep -A40 "^profile (each"
date -u
