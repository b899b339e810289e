#!/bin/bash
# GPU run 56 (prepared in session 13, whose device time ran out; for the next session). First
# build, on the development machine:
#   dev-out/s6 and dev-out/test-* from main (the wide d_state-16 scan shape v4c64t16 by default
#     from 16,384 channels, measured faster in run 55 but not yet run by the tests on a GPU);
#   dev-out/s6-stage and dev-out/test-cuda-stage, dev-out/test-cuda_train-stage from main with
#     patches/scan-fwd-stage.patch applied (the scan forward's cheaper per-(t, channel) stage:
#     run 55's Nsight profile gave 14.7 instructions per state-step for a recurrence of ~6.7;
#     checked on the CPU by scripts/emulate/run.sh, compiled for sm_90 by NVRTC and ptxas, never
#     run on a GPU);
# (Session 14 ran it without s6-prev: run 55 measured the previous shapes side by side.)
# Then: the tests of both builds, the scan benchmark of both, 1.4B prefill and 130M training of
# both, and Nsight Compute on the scan backward (its memory tables: shared-memory wavefronts) and
# on both forwards.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
run_cuda_tests
for n in test-cuda-stage test-cuda_train-stage; do
  timeout 150 dev-out/$n --test-threads=1 > /tmp/$n.log 2>&1; echo "$n exit $?"
  grep -E "test result" /tmp/$n.log; grep -E "FAILED|panicked" -A8 /tmp/$n.log | head -20
done
S6_SCAN_N16=v4c64t16 timeout 100 dev-out/test-cuda-stage --test-threads=1 scan 2>&1 | grep -E "test result|FAILED|panicked"
b() { local bin=$1; shift; $bin bench scan --device cuda "$@" 2>&1 | grep -E "^scan" | sed 's/  */ /g; s/ GB.s.*//'; }
for bin in s6 s6-stage; do
  echo "== $bin"
  b dev-out/$bin --repeats 5 --scan-seqlen 512,2048,8192,32768
  b dev-out/$bin --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
  b dev-out/$bin --repeats 3 --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
  b dev-out/$bin --repeats 2 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
done
echo "== s6 backward"; b dev-out/s6 --repeats 5 --backward --scan-seqlen 512,2048,8192
date -u
for bin in s6 s6-stage; do
  echo "== $bin"
  dev-out/$bin bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 2>&1 | grep -E "^prefill"
  dev-out/$bin bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 2>&1 | grep -E "^train"
done
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats --section LaunchStats"
prof() {  # name, binary, kernel regex, bench args...
  local name=$1 bin=$2 k=$3; shift 3
  timeout 120 $NCU --clock-control none -k regex:$k -s 1 -c 1 $SECTIONS dev-out/$bin bench scan --device cuda --repeats 1 "$@" > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E 'Duration|Executed Ipc Active|Issue Slots Busy|Achieved Occupancy|Registers Per|Executed Instructions  ' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
}
prof bwd s6 s6_scan_bwd_n16p --scan-seqlen 2048 --backward
prof fwd-main s6 s6_scan_n16 --scan-seqlen 2048
prof fwd-stage s6-stage s6_scan_n16 --scan-seqlen 2048
prof fwd-stage-big s6-stage s6_scan_n16 --scan-batch 128 --scan-d-inner 4096 --scan-seqlen 2048
date -u
