#!/bin/bash
# GPU run 75: where decoding's time goes now, kernel by kernel (each alone, cold caches; summed by
# ncu_summary.py): 1.4B at batch 128 (goal 35,000 tok/s, 30,004 now on an H100) and 130M and 1.4B
# at batch 1 (goals 4,000 and 800; 2,951 and 623 now).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
prof() {  # name, skip, count, bench decode args...
  local name=$1 skip=$2 count=$3; shift 3
  timeout 170 $NCU --clock-control none --graph-profiling node --csv --page raw --launch-skip $skip --launch-count $count \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread \
    dev-out/s6 bench decode --device cuda --dtype bf16 "$@" > $OUT/ncu-$name.csv 2> $OUT/ncu-$name.err
  echo "== $name"; python3 scripts/gpu/ncu_summary.py $OUT/ncu-$name.csv | head -22; tail -2 $OUT/ncu-$name.err
}
prof b128 2200 600 --preset mamba-1.4b --batch 128 --tokens 4 --repeats 1
prof b1-130m 1500 400 --preset mamba-130m --batch 1 --tokens 16 --repeats 1
prof b1-1.4b 2200 600 --preset mamba-1.4b --batch 1 --tokens 8 --repeats 1
date -u
