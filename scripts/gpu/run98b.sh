#!/bin/bash
# GPU run 98b (session 25): run98.sh cut to the device time left after failed starts: the cluster
# probe, the two new tests, one round of batch-1 decoding under the switches beside main's build.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
(nvcc -O3 -arch=sm_90 -o /tmp/cluster_probe scripts/gpu/cluster_probe.cu > /tmp/nvcc.log 2>&1; echo "nvcc exit $?" >> /tmp/nvcc.log) &
t xscan - test-cuda_decode xscan_mixer_step_equals_the_gemv_step
t cluster - test-cuda_decode cluster_step_kernel_equals_the_four_kernel_step
wait; tail -3 /tmp/nvcc.log
timeout 60 /tmp/cluster_probe > $OUT/cluster_probe.txt 2>&1; cat $OUT/cluster_probe.txt
date -u
dec() { timeout 60 dev-out/$1 bench decode --device cuda --dtype bf16 --batch 1 --repeats 3 "${@:2}" 2>&1 | grep -E "^decode|rror"; }
for cfg in "X=0" "S6_CLUSTER_STEP=16" "S6_CLUSTER_STEP=8" "S6_XSCAN=1 S6_PREFETCH_NEXT=2" "S6_PREFETCH_NEXT=2" "S6_XSCAN=1"; do
  echo "-- $cfg"
  (export $cfg; dec s6 --preset mamba-130m --tokens 128; dec s6 --preset mamba-1.4b --tokens 64)
done
echo "-- s6-main"; dec s6-main --preset mamba-130m --tokens 128
date -u
