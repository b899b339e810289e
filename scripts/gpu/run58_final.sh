#!/bin/bash
# GPU run 58 (session 14): main with the scan forward's cheaper stage (patch applied after run 57)
# and the scan backward's rule (n16r8 from 8 blocks per SM on, else n16p): every CUDA test, the
# backward tests with n16r6b4 forced (4 blocks per SM, chunks of 6), the backward kernels side by
# side at the training shapes, the forward's three d_state-16 shapes after the stage change,
# training (130M batch 16, 1.4B batch 8) with the rule and with n16p, and 1.4B prefill.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
S6_SCAN_BWD=n16r6b4 timeout 60 dev-out/test-cuda_backward --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
date -u
b() { dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for v in n16p n16r8 n16r6b4; do
  echo "== backward $v"
  export S6_SCAN_BWD=$v
  b --repeats 5 --backward --scan-seqlen 512,2048,8192
  b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  b --repeats 3 --backward --scan-batch 8 --scan-d-inner 4096 --scan-seqlen 2048
done
unset S6_SCAN_BWD
date -u
for shape in v4c32 v4c16t64 v4c64t16; do
  echo "== forward $shape"
  export S6_SCAN_N16=$shape
  b --repeats 5 --dtype bf16 --scan-seqlen 2048
  b --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  b --repeats 3 --dtype bf16 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  b --repeats 2 --dtype bf16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
done
unset S6_SCAN_N16
date -u
tr() { dev-out/s6 bench train --device cuda --dtype bf16 "$@" --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"; }
echo "== train, the rule"; tr --preset mamba-130m --batch 16; tr --preset mamba-1.4b --batch 8
echo "== train, n16p"; S6_SCAN_BWD=n16p tr --preset mamba-130m --batch 16; S6_SCAN_BWD=n16p tr --preset mamba-1.4b --batch 8
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
date -u
