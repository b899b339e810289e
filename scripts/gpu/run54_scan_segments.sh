#!/bin/bash
# GPU run 54 (session 13): the scan forward cut into segments run side by side for few channels
# (kernels/scan.cu, "Segments"; S6_SCAN_SEGMENTS forces a count); its tests and the training test
# mended after run 53 (the embedding's gradient varies run to run by itself: atomics); the scan
# benchmark with 1 (the previous kernel), 2, 4, 8 segments and the rule; Nsight Compute's view
# of the scan kernels (forward and backward) at the benchmark's shape.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 dev-out/test-cuda --test-threads=1 scan > /tmp/t1.log 2>&1; echo "test-cuda scan exit $?"
grep -E "test result" /tmp/t1.log; grep -E "FAILED|panicked" -A8 /tmp/t1.log | head -20
timeout 150 dev-out/test-cuda_train --test-threads=1 > /tmp/t2.log 2>&1; echo "test-cuda_train exit $?"
grep -E "test result" /tmp/t2.log; grep -E "FAILED|panicked" -A8 /tmp/t2.log | head -20
for seg in 1 2 4 8 rule; do
  if [ $seg = rule ]; then unset S6_SCAN_SEGMENTS; else export S6_SCAN_SEGMENTS=$seg; fi
  echo "== segments $seg"
  dev-out/s6 bench scan --device cuda --repeats 5 --scan-seqlen 512,2048,8192,32768 2>&1 | grep -E "^scan"
  dev-out/s6 bench scan --device cuda --dtype bf16 --repeats 5 --scan-seqlen 512,2048,8192,32768 2>&1 | grep -E "^scan"
done
unset S6_SCAN_SEGMENTS
dev-out/s6 bench scan --device cuda --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 2>&1 | grep -E "^scan"
dev-out/s6-prev bench scan --device cuda --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048 2>&1 | grep -E "^scan"
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats --section LaunchStats"
prof() {  # name, kernel regex, bench args...
  local name=$1 k=$2; shift 2
  S6_SCAN_SEGMENTS=1 timeout 90 $NCU --clock-control none -k regex:$k -s 1 -c 1 $SECTIONS dev-out/s6 bench scan --device cuda --repeats 1 "$@" > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E 'Duration|Executed Ipc Active|Issue Slots Busy|Achieved Occupancy|Theoretical Occupancy|Registers Per' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
}
prof fwd16 s6_scan_n16_bf16 --dtype bf16 --scan-seqlen 2048
prof bwd s6_scan_bwd --scan-seqlen 2048 --backward
prof fwd32big s6_scan_n16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
date -u
