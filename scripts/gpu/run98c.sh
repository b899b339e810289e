#!/bin/bash
# GPU run 98c (session 25): run98b.sh cut to ~3 minutes (the device time left): the two new tests,
# the cluster probe, batch-1 decoding with the cluster step and the fused x_proj against the default.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
(nvcc -O3 -arch=sm_90 -o /tmp/cluster_probe scripts/gpu/cluster_probe.cu > /tmp/nvcc.log 2>&1; echo "nvcc exit $?" >> /tmp/nvcc.log) &
t cluster - test-cuda_decode cluster_step_kernel_equals_the_four_kernel_step
t xscan - test-cuda_decode xscan_mixer_step_equals_the_gemv_step
dec() { timeout 50 dev-out/$1 bench decode --device cuda --dtype bf16 --batch 1 --repeats 3 "${@:2}" 2>&1 | grep -E "^decode|rror"; }
for cfg in "X=0" "S6_CLUSTER_STEP=16" "S6_CLUSTER_STEP=8" "S6_XSCAN=1 S6_PREFETCH_NEXT=2"; do
  echo "-- $cfg"; (export $cfg; dec s6 --preset mamba-130m --tokens 128)
done
wait; tail -2 /tmp/nvcc.log
timeout 40 /tmp/cluster_probe > $OUT/cluster_probe.txt 2>&1; cat $OUT/cluster_probe.txt
for cfg in "X=0" "S6_CLUSTER_STEP=16" "S6_XSCAN=1 S6_PREFETCH_NEXT=2"; do
  echo "-- $cfg"; (export $cfg; dec s6 --preset mamba-1.4b --tokens 64)
done
date -u
