#!/bin/bash
# GPU run 39 (session 10, final): the bf16 scan with its loads kept in bf16 until used; the scan
# rule's threshold at 16,384 channels; every CUDA test; the scan benchmarks (fp32 and bf16 at the
# TARGETS shapes, and the training shape) and decoding at batch 128.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
dev-out/s6 bench scan --device cuda --repeats 10 2>&1 | grep -E "^scan|limits"
dev-out/s6 bench scan --device cuda --dtype bf16 --repeats 10 2>&1 | grep -E "^scan"
dev-out/s6 bench scan --device cuda --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 --repeats 5 2>&1 | grep -E "^scan"
dev-out/s6 bench scan --device cuda --dtype bf16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048 --repeats 3 2>&1 | grep -E "^scan"
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 64 --repeats 2 2>&1 | grep graph
date -u
