#!/bin/bash
# GPU run 71 (session 19, after run 70): the scan backward with 4 lanes of 4 states per channel
# (s6_scan_bwd_n16q8, forced with S6_SCAN_BWD=n16q8): the backward tests with it, then the
# backward alone at the goal's shape (B=4 D=2048) and at 130M training's (B=16 D=1536), n16p,
# n16r8 and n16q8 side by side, and 130M training with the rule's kernel and with n16q8.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t backward-q8 S6_SCAN_BWD=n16q8 test-cuda_backward
t train-q8 S6_SCAN_BWD=n16q8 test-cuda_train grads
b() { timeout 60 dev-out/s6 bench scan --device cuda --dtype bf16 "$@" 2>&1 | grep -E "backward|rror"; }
for k in n16p n16r8 n16q8; do
  echo "== $k"
  S6_SCAN_BWD=$k b --repeats 5 --backward --scan-seqlen 2048
  S6_SCAN_BWD=$k b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
tr() { timeout 100 dev-out/s6 bench train --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^train|rror"; }
for k in rule n16q8; do echo "130M, scan backward $k"; S6_SCAN_BWD=$k tr --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
ncu_scan bwd-q8 s6_scan_bwd_n16q8 --backward --dtype bf16 --scan-seqlen 2048
date -u
