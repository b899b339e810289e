#!/bin/bash
# GPU run 36 (session 10): the large-batch scan step (s6_mixer_step_scan_n16) and two columns per
# warp group for 2-4 rows by default. Every CUDA test, then decoding side by side with the
# previous build (dev-out/s6-prev, main at e34d6f2) at batch 1-8 and 16-128, and Nsight
# Compute's per-kernel durations of a replayed 1.4B step at batch 128.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
for bin in s6-prev s6 s6-prev s6; do
  echo "== $bin"
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,2,4,8,16,64,128 --tokens 128 --repeats 3 2>&1 | grep graph
  dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,4,16,64,128 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 150 $NCU --clock-control none --graph-profiling node --csv --page raw \
  --launch-skip 2200 --launch-count 600 \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread \
  dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 4 --repeats 1 \
  > $OUT/ncu-b128.csv 2> $OUT/ncu-b128.err
python3 scripts/gpu/ncu_summary.py $OUT/ncu-b128.csv > $OUT/ncu-b128.txt; head -14 $OUT/ncu-b128.txt; tail -3 $OUT/ncu-b128.err
date -u
