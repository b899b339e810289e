#!/bin/bash
# GPU run 31 (session 9): run 30's batch of 8 weight loads per lane doubled the GEMV's registers
# and slowed it at batch 8 and at 1.4B; the default is now 2 (the old loop's depth, its first two
# loads before the PDL wait). Decoding and CUDA tests, then S6_GEMV_BATCH = 1, 2 (default), 4
# side by side with the previous binary (s6-prev, S6_PREFETCH=small), then ncu per kernel.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for n in test-cuda_decode test-cuda; do timeout 150 dev-out/$n --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"; done
for b in "env S6_PREFETCH=small dev-out/s6-prev" dev-out/s6 "env S6_GEMV_BATCH=1 dev-out/s6" "env S6_GEMV_BATCH=4 dev-out/s6"; do
  echo "== $b"
  $b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3 2>&1 | grep graph
  $b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
for ms in 130m:300 1.4b:1400; do
  m=${ms%:*}
  timeout 200 ncu --clock-control none --graph-profiling node --csv --page raw \
    -k regex:'s6_' --launch-skip ${ms#*:} --launch-count 200 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-$m --batch 1 --tokens 16 --repeats 1 \
    > $OUT/ncu-$m.csv 2> $OUT/ncu-$m.err
  python3 scripts/gpu/ncu_summary.py $OUT/ncu-$m.csv | head -8 | tee $OUT/ncu-$m.txt
done
date -u
