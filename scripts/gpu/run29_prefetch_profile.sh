#!/bin/bash
# GPU run 29 (session 9): the decoding tests of this build; the L2 prefetch rule
# (S6_PREFETCH=0 | small | 1, session 8's run 28) at batch 1 and 8; then Nsight Compute's
# duration and DRAM traffic of every decoding kernel of a few tokens at batch 1 (130M and
# 1.4B, bf16), aggregated per kernel into $OUT/ncu-*.txt. Binary: dev-out/s6.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 dev-out/test-cuda_decode --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
for p in 0 small 1; do
  echo "== S6_PREFETCH=$p"
  S6_PREFETCH=$p dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3 2>&1 | grep graph
  S6_PREFETCH=$p dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
for m in 130m 1.4b; do
  timeout 200 $NCU --clock-control none --graph-profiling node --csv --page raw \
    -k regex:'s6_' --launch-skip 300 --launch-count 400 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-$m --batch 1 --tokens 16 --repeats 1 \
    > $OUT/ncu-$m.csv 2> $OUT/ncu-$m.err
  python3 scripts/gpu/ncu_summary.py $OUT/ncu-$m.csv > $OUT/ncu-$m.txt
  cat $OUT/ncu-$m.txt; tail -3 $OUT/ncu-$m.err
done
date -u
