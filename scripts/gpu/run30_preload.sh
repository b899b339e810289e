#!/bin/bash
# GPU run 30 (session 9): the decoding kernels load their weights into registers before the PDL
# wait (a batch of 8 16-byte loads per lane in the GEMV, dt_proj/A/D/bias in the scan step) and
# the conv epilogue's weights likewise; the L2 prefetch rule `small` is the default. Every CUDA
# test, then decoding side by side with the previous binary (s6-prev, with S6_PREFETCH=small),
# then Nsight Compute's per-kernel durations as in run 29.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
for b in "env S6_PREFETCH=small dev-out/s6-prev" dev-out/s6 "env S6_PREFETCH=0 dev-out/s6"; do
  echo "== $b"
  $b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3 2>&1 | grep graph
  $b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
for ms in 130m:300 1.4b:1400; do
  m=${ms%:*}
  timeout 200 ncu --clock-control none --graph-profiling node --csv --page raw \
    -k regex:'s6_' --launch-skip ${ms#*:} --launch-count 400 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-$m --batch 1 --tokens 16 --repeats 1 \
    > $OUT/ncu-$m.csv 2> $OUT/ncu-$m.err
  python3 scripts/gpu/ncu_summary.py $OUT/ncu-$m.csv | tee $OUT/ncu-$m.txt
done
date -u
