#!/bin/bash
# GPU run 85 (prepared in session 21, not run yet): training memory and speed against d_state
# (issue 6: "training memory must stay flat in N"). 130M's shape with N = 16, 32, 64
# (scripts/gpu/configs/), batch 16 × 2048, bf16, each recompute mode; then the scan backward alone
# at each N. What grows with N is transient, per layer: the scan backward's chunk checkpoints
# (B·D·L/chunk·N floats) and its per-block dB/dC partials (blocks · rows · 2N floats).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
for n in 16 32 64; do
  for r in light full; do
    echo "== N=$n, $r"
    timeout 120 dev-out/s6 bench train --device cuda --dtype bf16 --config scripts/gpu/configs/mamba-130m-n$n.json \
      --batch 16 --seqlen 2048 --repeats 2 --recompute $r 2>&1 | grep -E "^train|rror"
  done
  timeout 60 dev-out/s6 bench scan --device cuda --backward --repeats 3 --scan-batch 16 --scan-d-inner 1536 \
    --scan-d-state $n --scan-seqlen 2048 2>&1 | grep -E "^scan|rror"
done
date -u
