#!/bin/bash
# GPU run 61 (session 15): runs 59 and 60 in one call (three starts failed this session and the
# device time left allows one): dev-out/s6-sp is main with the d_state-16 backward's softplus made
# the forward's (s6_softplus_fast), dev-out/s6 main before it (the backward template, not yet run
# on a GPU), dev-out/s6-old 802f947 (n16p before the template). Tests of s6-sp's build (the
# template and the softplus), the forward's v4c32 after the stage change, the backward's time
# side by side, then training, prefill and decoding with s6-sp's defaults.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t backward-sp - test-cuda_backward-sp
t backward-sp-n16r8 S6_SCAN_BWD=n16r8 test-cuda_backward-sp
t train-sp - test-cuda_train-sp
t scan-v4c32 S6_SCAN_N16=v4c32 test-cuda scan
date -u
b() { $BIN bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for v in old:n16p s6:n16p sp:n16p s6:n16r8 sp:n16r8; do
  echo "== backward $v"
  BIN=dev-out/s6; case $v in old:*) BIN=dev-out/s6-old;; sp:*) BIN=dev-out/s6-sp;; esac
  export S6_SCAN_BWD=${v#*:}
  b --repeats 5 --backward --scan-seqlen 2048 | grep backward
  b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 | grep backward
done
unset S6_SCAN_BWD
date -u
trn() { dev-out/s6-sp bench train --device cuda --dtype bf16 "$@" --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"; }
trn --preset mamba-130m --batch 16
trn --preset mamba-1.4b --batch 8
echo "recompute full:"; trn --preset mamba-1.4b --batch 8 --recompute full
dev-out/s6-sp bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
date -u
BIN=dev-out/s6-sp
for seg in 1 2; do
  echo "== forward, segments $seg"
  S6_SCAN_SEGMENTS=$seg b --repeats 5 --dtype bf16 --scan-seqlen 2048
done
for p in mamba-130m mamba-1.4b; do
  dev-out/s6-sp bench decode --device cuda --dtype bf16 --preset $p --batch 1,16,128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
