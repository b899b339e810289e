#!/usr/bin/env bash
# Runs the CUDA tests and benchmarks from prebuilt binaries on a GPU machine that has no Rust:
# build here with (add --release for release binaries)
#   cargo build -p s6-cli --features cuda
#   cargo test -p s6 --features cuda --test cuda --test cuda_backward --no-run
# copy `s6` and the test binaries to dev-out/ (as dev-out/s6, dev-out/cuda-tests and
# dev-out/cuda-backward-tests), then run this script from the repository root there. Logs go to
# $OUT (or ./dev-out/logs).
# Usage: scripts/cuda_device_check.sh [tests] [bench]
set -uo pipefail
OUT=${OUT:-dev-out/logs}
mkdir -p "$OUT"
# The CUDA toolkit's NVRTC and cuBLAS (s6 loads them at run time).
for lib in libnvrtc.so.1 libcublas.so.1; do
  d=$(find / \( -path /proc -o -path /sys \) -prune -o -name "${lib}*" -print 2>/dev/null | head -1)
  [ -n "$d" ] && export LD_LIBRARY_PATH="$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
date -u
what=${*:-tests bench}
if [[ $what == *tests* ]]; then
  dev-out/cuda-tests --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log" | grep -E "^test |test result|logits vs HF|skipped|panicked|error" 
  if [ -x dev-out/cuda-backward-tests ]; then
    dev-out/cuda-backward-tests --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests_backward.log" | grep -E "^test |test result|skipped|panicked|error"
  fi
fi
if [[ $what == *bench* ]]; then
  {
    dev-out/s6 bench scan --device cuda --repeats 20 --backward
    dev-out/s6 bench decode --device cuda --batch 1,16,64 --tokens 128 --repeats 3
    dev-out/s6 bench prefill --device cuda --batch 16 --seqlen 2048 --repeats 3
  } 2>&1 | tee "$OUT/bench.log"
fi
