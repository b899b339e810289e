#!/bin/bash
# GPU run 56 (session 13): the d_state-16 scan forward with a cheaper per-(t, channel) stage
# (run 55's Nsight profile: 2.94 IPC, 73% of issue slots, 14.7 instructions per state-step, two
# thirds of them outside the recurrence): softplus without branches or libdevice's log1pf, one
# base address and a stride per thread and array, u and silu(z) kept in registers for the store
# (no s_u, s_g), the lanes' partial sums read as one float4. Tests, then every block shape against
# s6-prev (main 6b4f192, the old kernels), then 1.4B prefill and 130M training side by side.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
S6_SCAN_N16=v4c64t16 timeout 100 dev-out/test-cuda --test-threads=1 scan > /tmp/t1b.log 2>&1; echo "test-cuda scan (v4c64t16) exit $?"
grep -E "test result" /tmp/t1b.log; grep -E "FAILED|panicked" -A8 /tmp/t1b.log | head -20
b() { local bin=$1; shift; $bin bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
echo "== s6-prev (default)"
b dev-out/s6-prev --repeats 5 --scan-seqlen 512,2048,8192,32768
b dev-out/s6-prev --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
b dev-out/s6-prev --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
b dev-out/s6-prev --repeats 2 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
for shape in v4c32 v4c16t64 v4c32t16 v4c16t32 v4c64t16; do
  echo "== s6 $shape"
  export S6_SCAN_N16=$shape
  b dev-out/s6 --repeats 5 --scan-seqlen 512,2048,8192
  b dev-out/s6 --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192
  b dev-out/s6 --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  case $shape in v4c32t16|v4c64t16) b dev-out/s6 --repeats 2 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048;; esac
done
unset S6_SCAN_N16
date -u
for run in "s6-prev" "s6" "s6 v4c64t16"; do
  set -- $run; echo "== $run"
  S6_SCAN_N16=$2 dev-out/$1 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
date -u
