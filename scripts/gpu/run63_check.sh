#!/bin/bash
# GPU run 63: prepared in session 15, for the next session's first call. Build dev-out/s6 and the
# four test binaries from main (pack them: `tar cf - dev-out | xz -T2 > dev-pack/bins.tar.xz`,
# carry ["dev-pack"]). Session 15 landed the forward's stepped loads (702bf8c) with its masked path
# as before the change, a build measured (run 62) and emulated but not run whole on a GPU: every
# CUDA test, then the forward at every L of the goal's table, fp32 and bf16, and the three block
# shapes forced at 16,384 and 24,576 channels (the `v4c16t64` / `v4c32` threshold may move now
# that both are faster) and `v4c32` against `v4c64t16` at 524,288 channels and in 1.4B prefill
# (`v4c32` was 5% slower there before its stepped loads, which took 9% off it at 24,576). The
# decoding profile first planned here moved to run 64.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
date -u
b() { dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
b --repeats 5 --scan-seqlen 512,2048,8192,32768
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
for shape in v4c16t64 v4c32 v4c64t16; do
  echo "== $shape"
  S6_SCAN_N16=$shape b --repeats 3 --dtype bf16 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  S6_SCAN_N16=$shape b --repeats 3 --dtype bf16 --scan-batch 8 --scan-d-inner 2048 --scan-seqlen 2048
done
for shape in v4c32 v4c64t16; do
  echo "== $shape, 524,288 channels, and 1.4B prefill"
  S6_SCAN_N16=$shape b --repeats 2 --dtype bf16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
  S6_SCAN_N16=$shape dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
date -u
