#!/bin/bash
# GPU run 73: why the one-kernel block step (S6_LAYER_STEP=1) lost to the four kernels in run 70
# (130M 2,165 vs 2,980 tok/s; 1.4B 466 vs 622): Nsight Compute on it at 1.4B and 130M (memory
# throughput, stall reasons, the hottest SASS lines), the four-kernel in_proj GEMV beside it; and
# the scan backward n16p / n16r8 / n16q8 side by side (run 70 passed `--dtype bf16`, which benches
# the forward only).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats --section SourceCounters"
prof() {  # name, kernel regex, preset, env
  local name=$1 k=$2 p=$3; shift 3
  env "$@" timeout 120 $ncu --clock-control none -k regex:$k -s 6 -c 1 $sec dev-out/s6 bench decode --device cuda --dtype bf16 --preset $p --batch 1 --tokens 4 --repeats 1 > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E ' Duration|DRAM Throughput|Memory Throughput|Executed Ipc Active|Registers Per|Achieved Occupancy' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
}
prof ls-1.4b s6_layer_step mamba-1.4b S6_LAYER_STEP=1
prof ls-130m s6_layer_step mamba-130m S6_LAYER_STEP=1
prof gemv-1.4b s6_gemv_bf16_norm mamba-1.4b S6_LAYER_STEP=0
prof gemv-130m s6_gemv_bf16_norm mamba-130m S6_LAYER_STEP=0
date -u
b() { timeout 60 dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan backward|rror"; }
for k in n16p n16r8 n16q8; do
  echo "== $k"
  S6_SCAN_BWD=$k b --repeats 5 --backward --scan-seqlen 2048
  S6_SCAN_BWD=$k b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
date -u
