#!/bin/bash
# GPU run 59: prepared in session 14, not run (the device tool found no machine for the last three
# calls and then had too little time left to start one); the next session's first call. Build
# dev-out/s6 and the test binaries from main, dev-out/s6-old from 802f947 (n16p before the
# template), then run it with carry ["dev-out"]. What it checks: the final build. The scan
# backward's two kernels are one template now (n16p stages its inputs as n16r8 does, packed float4s:
# 116 registers, no spills; checked on the CPU by scripts/emulate/scan_bwd_emu.cpp): its tests and
# its time against the binary before (dev-out/s6-old) and n16r8. The forward's shapes by size
# (v4c16t64 / v4c32 / v4c64t16 at 16,384 and 131,072 channels): the scan tests with v4c32 forced
# (not run by the tests since the stage change), training and prefill with the defaults. Then, as
# time allows, the forward's two wide shapes around the new threshold and segments at the
# benchmark's shape (B=4, D=2048: ~8 warps per SM with 4 lanes per channel, latency-bound since the
# stage change). Decoding (session 15): not measured on an H200 since session 11.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t backward - test-cuda_backward
t backward-n16r8 S6_SCAN_BWD=n16r8 test-cuda_backward
t train - test-cuda_train
t scan-v4c32 S6_SCAN_N16=v4c32 test-cuda scan
date -u
b() { $BIN bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for v in old-n16p n16p n16r8; do
  echo "== backward $v"
  BIN=dev-out/s6; [ $v = old-n16p ] && BIN=dev-out/s6-old
  export S6_SCAN_BWD=${v#old-}
  b --repeats 5 --backward --scan-seqlen 512,2048,8192 | grep backward
  b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 | grep backward
done
unset S6_SCAN_BWD
BIN=dev-out/s6
date -u
trn() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"; }
trn --preset mamba-130m --batch 16
echo "n16p:"; S6_SCAN_BWD=n16p trn --preset mamba-130m --batch 16
trn --preset mamba-1.4b --batch 8
echo "recompute full:"; trn --preset mamba-1.4b --batch 8 --recompute full
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
date -u
for p in mamba-130m mamba-1.4b; do
  dev-out/s6 bench decode --device cuda --dtype bf16 --preset $p --batch 1,16,128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
t cuda - test-cuda
for shape in v4c16t64 v4c32; do
  for seg in 1 2 4; do
    echo "== forward $shape, segments $seg"
    S6_SCAN_N16=$shape S6_SCAN_SEGMENTS=$seg b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192
  done
done
date -u
for shape in v4c32 v4c64t16; do
  echo "== forward $shape"
  export S6_SCAN_N16=$shape
  b --repeats 3 --dtype bf16 --scan-batch 8 --scan-d-inner 4096 --scan-seqlen 2048
  b --repeats 3 --dtype bf16 --scan-batch 32 --scan-d-inner 4096 --scan-seqlen 2048
done
date -u
