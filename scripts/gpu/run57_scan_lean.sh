#!/bin/bash
# GPU run 57 (session 13; run 56's script cut to the device time left): the d_state-16 scan
# forward with the cheaper per-(t, channel) stage (see run56_scan_staging.sh): the CUDA tests that
# run the scan (kernels, models against the HF fixtures, decoding, training), the scan benchmark
# against s6-prev (main 6b4f192) with the default rule and two of the new block shapes, then 1.4B
# prefill side by side.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
for n in test-cuda test-cuda_decode test-cuda_train; do
  timeout 100 dev-out/$n --test-threads=1 > /tmp/$n.log 2>&1; echo "$n exit $?"
  grep -E "test result" /tmp/$n.log; grep -E "FAILED|panicked" -A8 /tmp/$n.log | head -20
done
b() { local bin=$1; shift; $bin bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for bin in s6-prev s6; do
  echo "== $bin (default)"
  b dev-out/$bin --repeats 5 --scan-seqlen 512,2048,8192,32768
  b dev-out/$bin --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
  b dev-out/$bin --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
for shape in v4c32t16 v4c64t16; do
  echo "== s6 $shape"
  export S6_SCAN_N16=$shape
  b dev-out/s6 --repeats 5 --scan-seqlen 512,2048,8192
  b dev-out/s6 --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192
  b dev-out/s6 --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
unset S6_SCAN_N16
date -u
echo "== B=128 D=4096: s6 v4c32 (default), v4c64t16"
b dev-out/s6 --repeats 2 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
S6_SCAN_N16=v4c64t16 b dev-out/s6 --repeats 2 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
for bin in s6-prev s6; do
  echo "== $bin prefill"
  dev-out/$bin bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
date -u
