#!/bin/bash
# GPU run 92 (session 23; the kernel change it measured was slower and was not merged: the build
# was commit ccd6269 of a deleted branch, described in docs/BENCHMARKS.md): n16r8's dB/dC partials summed over a warp's channels with shuffles
# (S6_SCAN_BWD_BC_SHFL, default 1) and its launch bound of 4 blocks per SM (S6_SCAN_BWD_R8_BLOCKS,
# default 4: 128 registers, no spills) against main (ecf0bdf) and the previous kernel
# (BC_SHFL=0, 3 blocks); the backward's tests first.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t bwd - test-cuda_backward
t train - test-cuda_train
t bwd_r3 S6_SCAN_BWD_R8_BLOCKS=3 test-cuda_backward scan_backward
date -u
sb() { timeout 60 dev-out/${BIN:-s6} bench scan --device cuda --backward --repeats 5 --scan-seqlen 2048 "$@" 2>&1 | grep -E "^scan backward|rror" | sed 's/  */ /g; s/ GB.s.*//'; }
shapes() { sb; sb --scan-batch 16 --scan-d-inner 1536; sb --scan-batch 8 --scan-d-inner 4096; }
for r in 1 2; do
  echo "== main"; BIN=s6-main shapes
  echo "== shfl, 4 blocks (default)"; shapes
  echo "== shfl, 3 blocks"; (export S6_SCAN_BWD_R8_BLOCKS=3; shapes)
  echo "== no shfl, 3 blocks"; (export S6_SCAN_BWD_BC_SHFL=0 S6_SCAN_BWD_R8_BLOCKS=3; shapes)
  echo "== n16r8 forced at B=4"; (export S6_SCAN_BWD=n16r8; sb)
done
date -u
for bin in s6-main s6; do echo "== $bin"; train_bench $bin --preset mamba-130m --batch 16; train_bench $bin --preset mamba-1.4b --batch 8; done
date -u
