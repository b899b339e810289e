#!/bin/bash
# GPU run 42 (prepared in session 10 for the next one): the scan backward with 4 states per lane
# (s6_scan_bwd_n16v and _n16v14, chunks of 7 and 14 steps, selected by S6_SCAN_BWD=n16v | n16v14;
# written without a GPU). Its tests (the scan
# backward and training tests) with it on, then the scan backward benchmark, 130M and 1.4B training
# with it off and on, and 1.4B training with the final forward rule (not measured in session 10).
# If it passes and is faster, make it the default in backward.rs (`scan_bwd_n16v`). Binaries:
# dev-out/s6 and the test binaries, built with `--features cuda`.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for v in n16p n16v n16v14; do
  echo "== S6_SCAN_BWD=$v"
  S6_SCAN_BWD=$v timeout 150 dev-out/test-cuda_backward --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked" -A3 | head -12
  S6_SCAN_BWD=$v timeout 150 dev-out/test-cuda_train --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked" -A3 | head -12
  S6_SCAN_BWD=$v dev-out/s6 bench scan --device cuda --repeats 10 --backward 2>&1 | grep -E "^scan backward"
  S6_SCAN_BWD=$v dev-out/s6 bench scan --device cuda --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 --repeats 5 --backward 2>&1 | grep -E "^scan backward"
  S6_SCAN_BWD=$v dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
  S6_SCAN_BWD=$v dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 2>&1 | grep -E "^train"
  date -u
done
date -u
run_cuda_tests
date -u
