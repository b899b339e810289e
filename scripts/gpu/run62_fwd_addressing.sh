#!/bin/bash
# GPU run 62 (session 15): the d_state-16 scan forward with its loads and stores' pointers stepped
# and unmasked in full chunks (SASS: ~90 fewer instructions per chunk and thread of v4c64t16,
# ~9%). dev-out/s6-base = main (b9b50f0), s6-new = with it (v4c64t16 held to 64 registers, 4
# blocks per SM, 16 bytes spilled), s6-new-r = with it, v4c64t16 unbounded (70 registers, 3
# blocks). The scan tests of the new build (the default shapes now reach all three block shapes),
# then the forward side by side at the three shapes' sizes, and prefill.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t scan-new - test-cuda-new scan
date -u
b() { dev-out/$1 bench scan --device cuda "${@:2}" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for bin in s6-base s6-new s6-new-r s6-base s6-new; do
  echo "== $bin"
  b $bin --repeats 5 --dtype bf16 --scan-seqlen 2048,8192
  b $bin --repeats 5 --scan-seqlen 2048
  b $bin --repeats 3 --dtype bf16 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  b $bin --repeats 2 --dtype bf16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
done
date -u
for bin in s6-base s6-new; do
  echo "== $bin"
  dev-out/$bin bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
date -u
