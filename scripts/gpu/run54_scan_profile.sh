#!/bin/bash
# GPU run 54 (session 13): the training test whose assertion was too strict in run 53 (the
# embedding's backward adds with atomics, so its gradient varies from run to run by itself), then
# Nsight Compute's sections for the scan kernels (forward fp32 and bf16, backward) at the
# benchmark's shape (B=4, D=2048, L=2048) and at 1.4B prefill's (B=128, D=4096): where the
# forward's time goes (issue, SFU, shared memory, stalls) before changing it.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 dev-out/test-cuda_train --test-threads=1 > /tmp/t.log 2>&1; echo "test-cuda_train exit $?"
grep -E "test result" /tmp/t.log; grep -E "FAILED|panicked" -A8 /tmp/t.log | head -30
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats --section LaunchStats --section MemoryWorkloadAnalysis"
prof() {  # name, kernel regex, bench args...
  local name=$1 k=$2; shift 2
  timeout 120 $NCU --clock-control none -k regex:$k -s 1 -c 1 $SECTIONS dev-out/s6 bench scan --device cuda --repeats 1 "$@" > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E 'Duration|Executed Ipc Active|Issue Slots Busy|Achieved Occupancy|Theoretical Occupancy|Registers Per' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
}
prof fwd32 s6_scan_n16 --scan-seqlen 2048
prof fwd16 s6_scan_n16_bf16 --dtype bf16 --scan-seqlen 2048
prof bwd s6_scan_bwd --scan-seqlen 2048 --backward
prof fwd32big s6_scan_n16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
dev-out/s6 bench scan --device cuda --repeats 5 --scan-seqlen 512,2048,8192 --backward 2>&1 | grep -E "^scan"
dev-out/s6 bench scan --device cuda --dtype bf16 --repeats 5 --scan-seqlen 512,2048,8192 2>&1 | grep -E "^scan"
date -u
