#!/bin/bash
# GPU run 55 (session 13): the d_state-16 scan forward cut into segments for few channels, and
# three new block shapes with fewer registers and less shared memory per block (ptxas, sm_90:
# v4c32 124 registers / 36 KB, 16 warps per SM; v4c16t64 238 / 40 KB, 8 warps; v4c32t16 72 /
# 18 KB, 28 warps; v4c16t32 168 / 20 KB, 12 warps; v4c64t16 80 / 34 KB, 24 warps). Tests first
# (the scan tests with the segments; the training test mended after run 53), then the scan
# benchmark for every shape with and without segments, then Nsight Compute on two kernels.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
timeout 150 dev-out/test-cuda --test-threads=1 scan > /tmp/t1.log 2>&1; echo "test-cuda scan exit $?"
grep -E "test result" /tmp/t1.log; grep -E "FAILED|panicked" -A8 /tmp/t1.log | head -20
S6_SCAN_N16=v4c32t16 timeout 150 dev-out/test-cuda --test-threads=1 scan > /tmp/t1b.log 2>&1; echo "test-cuda scan (v4c32t16) exit $?"
grep -E "test result" /tmp/t1b.log; grep -E "FAILED|panicked" -A8 /tmp/t1b.log | head -20
timeout 150 dev-out/test-cuda_train --test-threads=1 > /tmp/t2.log 2>&1; echo "test-cuda_train exit $?"
grep -E "test result" /tmp/t2.log; grep -E "FAILED|panicked" -A8 /tmp/t2.log | head -20
date -u
b() { local t0=$(date +%s%N); dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g'; echo "  ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"; }
for shape in v4c32 v4c16t64 v4c32t16 v4c16t32 v4c64t16; do
  for seg in 1 4; do
    echo "== $shape segments $seg"
    export S6_SCAN_N16=$shape S6_SCAN_SEGMENTS=$seg
    b --repeats 5 --scan-seqlen 512,2048,8192
    b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192
    if [ $seg = 1 ]; then
      b --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
      b --repeats 2 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
    fi
  done
done
unset S6_SCAN_N16 S6_SCAN_SEGMENTS
date -u
for seg in 2 8; do
  for shape in v4c32t16 v4c16t64; do
    echo "== $shape segments $seg"
    S6_SCAN_N16=$shape S6_SCAN_SEGMENTS=$seg b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
  done
done
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats"
prof() {  # name, kernel regex, bench args...
  local name=$1 k=$2; shift 2
  timeout 90 $NCU --clock-control none -k regex:$k -s 1 -c 1 $SECTIONS dev-out/s6 bench scan --device cuda --repeats 1 "$@" > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E 'Duration|Executed Ipc Active|Issue Slots Busy|Achieved Occupancy|Theoretical Occupancy|Registers Per' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
}
S6_SCAN_SEGMENTS=1 prof fwd32big s6_scan_n16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
prof bwd s6_scan_bwd --scan-seqlen 2048 --backward
date -u
