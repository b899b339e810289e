#!/bin/bash
# GPU run 65 (session 16): run 63 found the overlapped token reads unsynchronized (cudarc records
# a page-locked buffer's event only with its event tracking on, which the backend turns off: the
# reads returned before their copies, `fixtures_logits_and_greedy_match_hf` failed and the
# overlapped decode rows were host-only times). Now an event of our own follows each copy. The
# decoding and model tests, then decoding side by side (graph: reads overlapped; each step waited
# for: as before).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t decode - test-cuda_decode
t cuda - test-cuda
date -u
for p in mamba-130m mamba-1.4b; do
  dev-out/s6 bench decode --device cuda --dtype bf16 --preset $p --batch 1,16,128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
