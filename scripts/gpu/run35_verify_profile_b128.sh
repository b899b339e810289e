#!/bin/bash
# GPU run 35 (session 10): every CUDA test with session 9's final defaults (two columns per
# warp group at one row); decoding at batch 1, 2, 4, 8 with the GEMV column settings for 2-4 rows
# (S6_GEMV_NC24 = 1, the default, 2, 4); then where 1.4B decoding at batch 128 and 1.4B prefill
# spend their time: `--profile` (each op alone) and Nsight Compute's per-kernel durations of one
# replayed decoding step (all kernels, cuBLAS's included), summed by ncu_summary.py.
# Binaries: dev-out/s6 and the four test binaries, built with `--features cuda`.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
dev-out/s6 bench scan --device cuda --repeats 10 --backward 2>&1 | grep -E "scan|limits"
for e in "" "S6_GEMV_NC24=2" "S6_GEMV_NC24=4"; do
  echo "== ${e:-default}"
  env $e dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,2,4,8 --tokens 128 --repeats 3 2>&1 | grep graph
  env $e dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,2,4,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,128 --tokens 64 --repeats 2 2>&1 | grep -E "graph|limit"
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 8 --repeats 1 --profile > $OUT/profile-decode-b128.txt 2>&1
sed -n '/timed pass/,$p' $OUT/profile-decode-b128.txt | head -40
dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 --profile > $OUT/profile-prefill.txt 2>&1
sed -n '/timed pass/,$p' $OUT/profile-prefill.txt | head -40
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 200 $NCU --clock-control none --graph-profiling node --csv --page raw \
  --launch-skip 2200 --launch-count 600 \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread \
  dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 4 --repeats 1 \
  > $OUT/ncu-b128.csv 2> $OUT/ncu-b128.err
python3 scripts/gpu/ncu_summary.py $OUT/ncu-b128.csv > $OUT/ncu-b128.txt; cat $OUT/ncu-b128.txt | head -40; tail -3 $OUT/ncu-b128.err
date -u
