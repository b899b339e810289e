#!/bin/bash
# GPU run 63 (session 16). Every CUDA test on main (session 15's stepped forward with its masked
# path as before, never run whole on a GPU; the forward's operands loaded a step ahead; decoding
# reading tokens while the next step runs), then the forward with its recurrence loading step
# t + 1's shared-memory operands during step t (`S6_SCAN_AHEAD`: 0 = as before, 1 = default, in
# the shapes with 8+ elements per thread, 2 = every shape) side by side, interleaved; the forward
# at every L of the goal's table, fp32 and bf16; the backward's n16p with the same look-ahead
# (`S6_SCAN_BWD_AHEAD`, 0 = as before); decoding at 130M and 1.4B (graph rows: tokens read
# while the next step runs, and each step waited for), 1.4B prefill. (Seven failed starts left
# device time for one short call: the block-shape comparisons, the forward at every L and second
# rounds are left out.)
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
t scan-ahead0 S6_SCAN_AHEAD=0 test-cuda scan
t backward-ahead0 S6_SCAN_BWD_AHEAD=0 test-cuda_backward
date -u
b() { dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for round in 1; do
  for a in 0 1; do
    echo "== ahead $a, round $round"
    S6_SCAN_AHEAD=$a b --repeats 5 --dtype bf16 --scan-seqlen 2048,8192
    S6_SCAN_AHEAD=$a b --repeats 5 --scan-seqlen 2048
    S6_SCAN_AHEAD=$a b --repeats 3 --dtype bf16 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  done
done
date -u
for round in 1; do
  for a in 0 1; do
    echo "== backward ahead $a, round $round (n16p at B=4 D=2048; forced at B=16 D=1536, where n16r8 is the rule's)"
    S6_SCAN_BWD_AHEAD=$a b --repeats 5 --backward --scan-seqlen 2048 | grep backward
    S6_SCAN_BWD_AHEAD=$a S6_SCAN_BWD=n16p b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 | grep backward
  done
done
b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 | grep backward
date -u
for p in mamba-130m mamba-1.4b; do
  dev-out/s6 bench decode --device cuda --dtype bf16 --preset $p --batch 1,128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
date -u
