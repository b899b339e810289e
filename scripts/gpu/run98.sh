#!/bin/bash
# GPU run 98 (session 25): sessions 24 and 25's batch-1 decoding work in one call, decisive parts
# first: the tests of the fused x_proj and of the cluster step, the cluster probe, batch-1 decoding
# under every switch beside main's build, then the decoding tests with the switches on and a second
# round (~8 minutes). `run98.sh short` (~3 minutes, for the device time left after failed starts):
# the tests, the probe and one round of the main switches.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
(nvcc -O3 -arch=sm_90 -o /tmp/cluster_probe scripts/gpu/cluster_probe.cu > /tmp/nvcc.log 2>&1; echo "nvcc exit $?" >> /tmp/nvcc.log) &
t cluster - test-cuda_decode cluster_step_kernel_equals_the_four_kernel_step
t xscan - test-cuda_decode xscan_mixer_step_equals_the_gemv_step
wait; tail -3 /tmp/nvcc.log
timeout 60 /tmp/cluster_probe > $OUT/cluster_probe.txt 2>&1; cat $OUT/cluster_probe.txt
date -u
dec() { timeout 80 dev-out/$1 bench decode --device cuda --dtype bf16 --batch 1 --repeats 3 "${@:2}" 2>&1 | grep -E "^decode|rror"; }
ab() {
  for cfg in "$@"; do
    echo "-- $cfg"
    (export $cfg; dec s6 --preset mamba-130m --tokens 128; dec s6 --preset mamba-1.4b --tokens 64)
  done
}
if [ "$1" = short ]; then
  ab "X=0" "S6_CLUSTER_STEP=16" "S6_CLUSTER_STEP=8" "S6_XSCAN=1 S6_PREFETCH_NEXT=2"
  date -u; exit 0
fi
ab "X=0" "S6_XSCAN=1" "S6_PREFETCH_NEXT=1" "S6_PREFETCH_NEXT=2" "S6_XSCAN=1 S6_PREFETCH_NEXT=2" "S6_CLUSTER_STEP=8" "S6_CLUSTER_STEP=16"
echo "-- s6-main"; dec s6-main --preset mamba-130m --tokens 128; dec s6-main --preset mamba-1.4b --tokens 64
date -u
t decode_xp "S6_XSCAN=1 S6_PREFETCH_NEXT=2" test-cuda_decode
t decode_cl16 S6_CLUSTER_STEP=16 test-cuda_decode
date -u
echo "-- round 2"
ab "X=0" "S6_XSCAN=1 S6_PREFETCH_NEXT=2" "S6_CLUSTER_STEP=8" "S6_CLUSTER_STEP=16"
date -u
