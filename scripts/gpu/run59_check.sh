#!/bin/bash
# GPU run 59 (session 14): the final build (forward shapes by size: v4c16t64 / v4c32 / v4c64t16 at
# 16,384 and 131,072 channels; backward n16r8 from 8 blocks per SM): the tests (the scan tests
# with v4c32 forced too: that shape had not run the tests since the stage change), training and
# prefill with the defaults, the forward's two wide shapes around the new threshold, and the
# forward at the benchmark's shape (B=4, D=2048: 8,192 channels, ~8 warps per SM with 4 lanes per
# channel, latency-bound since the stage change) with the low-register shapes and segments.
# Also the scan backward's two kernels as one template (n16p now stages its inputs as n16r8 does:
# packed float4s; 116 registers, no spills): its tests, and its time against the binary before
# (dev-out/s6-old) and n16r8.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
for shape in v4c32 v4c16t32 v4c16t16 v4c32t16; do
  echo "scan tests, $shape: $(S6_SCAN_N16=$shape timeout 60 dev-out/test-cuda --test-threads=1 scan 2>&1 | grep -E "test result|FAILED|panicked" | tr '\n' ' ')"
done
S6_SCAN_BWD=n16r8 timeout 60 dev-out/test-cuda_backward --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
date -u
b() { $BIN bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for v in old-n16p n16p n16r8 old-n16p; do
  echo "== backward $v"
  BIN=dev-out/s6; [ $v = old-n16p ] && BIN=dev-out/s6-old
  export S6_SCAN_BWD=${v#old-}
  b --repeats 5 --backward --scan-seqlen 512,2048,8192 | grep backward
  b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 | grep backward
  b --repeats 3 --backward --scan-batch 8 --scan-d-inner 4096 --scan-seqlen 2048 | grep backward
done
unset S6_SCAN_BWD
BIN=dev-out/s6
date -u
trn() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"; }
trn --preset mamba-130m --batch 16; trn --preset mamba-1.4b --batch 8
echo "n16p:"; S6_SCAN_BWD=n16p trn --preset mamba-130m --batch 16
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
date -u
for shape in v4c32 v4c64t16; do
  echo "== forward $shape"
  export S6_SCAN_N16=$shape
  b --repeats 3 --dtype bf16 --scan-batch 8 --scan-d-inner 4096 --scan-seqlen 2048
  b --repeats 3 --dtype bf16 --scan-batch 32 --scan-d-inner 4096 --scan-seqlen 2048
  b --repeats 2 --dtype bf16 --scan-batch 64 --scan-d-inner 4096 --scan-seqlen 2048
done
date -u
for shape in v4c16t64 v4c16t32 v4c16t16 v4c32t16; do
  for seg in 1 2 4; do
    echo "== forward $shape, segments $seg"
    S6_SCAN_N16=$shape S6_SCAN_SEGMENTS=$seg b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192
  done
done
date -u
