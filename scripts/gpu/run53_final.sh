#!/bin/bash
# GPU run 53 (session 12): the final rule after run 52 (the warp-per-row RMSNorm only from 1,024
# rows: prefill and training; decoding keeps the block per row): the kernel tests (the norm's
# shapes of 1,024-1,500 rows; cuBLASLt's test; the copies' default in training; all four binaries), then decoding and prefill side by side with s6-prev
# (main 89436a8); then decoding with cuBLASLt's tuned algorithms for the products of 9-256 rows
# (S6_LT=1, cuda/lt.rs, written after session 12's last call).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for n in test-cuda test-cuda_decode test-cuda_backward test-cuda_train; do
  timeout 150 dev-out/$n --test-threads=1 > /tmp/$n.log 2>&1; echo "$n exit $?"
  grep -E "test result" /tmp/$n.log; grep -E "FAILED|panicked" -A8 /tmp/$n.log | head -30
done
for b in s6-prev s6 s6-prev s6; do
  echo "== $b"
  dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 1 2>&1 | grep graph
  dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
  dev-out/$b bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
for lt in 0 1 0 1; do
  echo "== s6 S6_LT=$lt"
  S6_LT=$lt dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 1 2>&1 | grep graph
  S6_LT=$lt dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
done
date -u
