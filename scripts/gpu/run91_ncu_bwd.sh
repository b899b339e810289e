#!/bin/bash
# GPU run 91 (session 23): Nsight Compute on the d_state-16 scan backward kernels after session
# 23's changes, to check whether they are bound by the shared-memory pipe (stall reasons, the
# LSU/MIO pipes' utilization, shared-memory wavefronts): n16r8 at 130M training's shape, n16p at
# the goal's.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis_Tables --section Occupancy"
one() {  # name, kernel, bench args
  local name=$1 k=$2; shift 2
  timeout 120 $ncu --clock-control none -k regex:$k -s 1 -c 1 $sec dev-out/s6 bench scan --device cuda --backward --repeats 1 --scan-seqlen 2048 "$@" > $OUT/ncu-$name.txt 2>&1
  grep -E "Duration|Issue Slots Busy|Executed Ipc Active|Registers Per|Achieved Occupancy|Executed Instructions  |Shared.*Wavefronts|Bank Conflicts|Stall|stall|Pipe|MIO|LSU" $OUT/ncu-$name.txt | tr -s ' ' | head -60
}
echo "== n16r8, B=16 D=1536"; one r8 s6_scan_bwd_n16r8 --scan-batch 16 --scan-d-inner 1536
echo "== n16p, B=4 D=2048"; one p s6_scan_bwd_n16p
date -u
