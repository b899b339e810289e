#!/bin/bash
# GPU run 60 (session 15): the d_state-16 scan backward with the forward's softplus
# (s6_softplus_fast, now in prelude.cu, instead of __logf(1 + __expf(x))), so that its recomputed
# states are the forward's to the bit: dev-out/*-sp built from the working tree with it. Its
# backward and training tests (each backward kernel forced), then its time against dev-out/s6
# (main before it) side by side, and training with both.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t backward-sp - test-cuda_backward-sp
t backward-sp-n16r8 S6_SCAN_BWD=n16r8 test-cuda_backward-sp
t backward-sp-n16p S6_SCAN_BWD=n16p test-cuda_backward-sp
t train-sp - test-cuda_train-sp
date -u
b() { $BIN bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for bin in s6 s6-sp s6 s6-sp; do
  for v in n16p n16r8; do
    echo "== $bin $v"
    BIN=dev-out/$bin
    export S6_SCAN_BWD=$v
    b --repeats 5 --backward --scan-seqlen 2048 | grep backward
    b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 | grep backward
  done
done
unset S6_SCAN_BWD
date -u
for bin in s6 s6-sp; do
  echo "== $bin"
  dev-out/$bin bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
date -u
