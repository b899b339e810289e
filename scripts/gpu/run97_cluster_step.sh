#!/bin/bash
# GPU run 97 (session 25): the block step in one thread-block cluster (S6_CLUSTER_STEP=8|16,
# kernels/layer_step.cu): its test against the four-kernel step, batch-1 decoding with clusters of
# 8 and 16 blocks against the default (two rounds) and main's build, then every decoding test with
# it on. Run after run96_cluster_probe.sh, which says whether 8 or 16 SMs can stream a layer's
# weights fast enough.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t cluster - test-cuda_decode cluster_step_kernel_equals_the_four_kernel_step
dec() { timeout 80 dev-out/$1 bench decode --device cuda --dtype bf16 --batch 1 --repeats 3 "${@:2}" 2>&1 | grep -E "^decode|rror"; }
for round in 1 2; do
  for cl in 0 8 16; do
    echo "-- round $round, S6_CLUSTER_STEP=$cl"
    S6_CLUSTER_STEP=$cl dec s6 --preset mamba-130m --tokens 128
    S6_CLUSTER_STEP=$cl dec s6 --preset mamba-1.4b --tokens 64
  done
done
echo "-- s6-main"; dec s6-main --preset mamba-130m --tokens 128; dec s6-main --preset mamba-1.4b --tokens 64
date -u
t decode_cluster16 S6_CLUSTER_STEP=16 test-cuda_decode
t decode_cluster8 S6_CLUSTER_STEP=8 test-cuda_decode
date -u
