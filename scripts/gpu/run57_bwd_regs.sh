#!/bin/bash
# GPU run 57 (session 14): the scan backward with the chunk's states in registers
# (S6_SCAN_BWD=n16r8|n16r8b4|n16r12, checked on the CPU by scripts/emulate/scan_bwd_emu.cpp): its
# tests, its time against n16p, training with it; the training tests (the embedding's backward
# without atomics, gradients the same bits run to run); session 13's plan (run 56, never run; folded
# in here) for the scan forward's cheaper stage (patches/scan-fwd-stage.patch: its tests, scan
# benchmark and prefill against main); Nsight Compute on the backward kernels. Most important first.
# Binaries: dev-out/s6 and dev-out/test-* (main), dev-out/s6-stage, dev-out/test-cuda-stage,
# dev-out/test-cuda_train-stage.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
for v in n16r8 n16r12; do t backward-$v S6_SCAN_BWD=$v test-cuda_backward; done
date -u
b() { local bin=$1; shift; $bin bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for v in n16p n16r8 n16r8b4 n16r12 n16p; do
  echo "== backward $v"
  S6_SCAN_BWD=$v b dev-out/s6 --repeats 5 --backward --scan-seqlen 512,2048,8192
  S6_SCAN_BWD=$v b dev-out/s6 --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
date -u
t fwd-stage - test-cuda-stage scan
t fwd-stage-wide S6_SCAN_N16=v4c64t16 test-cuda-stage scan
for bin in s6 s6-stage; do
  echo "== $bin"
  b dev-out/$bin --repeats 5 --scan-seqlen 512,2048,8192,32768
  b dev-out/$bin --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
  b dev-out/$bin --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
date -u
for v in n16p n16r8 n16r12; do
  echo "== train $v"
  S6_SCAN_BWD=$v dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
for bin in s6 s6-stage; do
  dev-out/$bin bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
done
date -u
for v in n16r8b4; do t backward-$v S6_SCAN_BWD=$v test-cuda_backward; done
t train-n16r8 S6_SCAN_BWD=n16r8 test-cuda_train
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats --section LaunchStats"
prof() {  # name, binary, kernel regex, bench args...
  local name=$1 bin=$2 k=$3; shift 3
  timeout 80 $NCU --clock-control none -k regex:$k -s 1 -c 1 $SECTIONS dev-out/$bin bench scan --device cuda --repeats 1 "$@" > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E 'Duration|Executed Ipc Active|Issue Slots Busy|Achieved Occupancy|Registers Per|Executed Instructions  ' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
}
prof bwd-n16p s6 s6_scan_bwd_n16p --scan-seqlen 2048 --backward
S6_SCAN_BWD=n16r8 prof bwd-n16r8 s6 s6_scan_bwd_n16r --scan-seqlen 2048 --backward
prof fwd-stage s6-stage s6_scan_n16 --scan-seqlen 2048
date -u
