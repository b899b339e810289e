#!/bin/bash
# GPU run 87 as it ran (session 22, 13:33 UTC, one H100): the branch's new tests, the decoding
# test binary and the norm's test, training memory at N = 64 (main beside the branch), decoding
# at 1.4B batch 128: main, the branch, S6_DT_FUSED=1 (S6_DT_F32=1 too then, since removed). Its
# decoding loop passed a shell function to `env` and did not run (fixed here); those figures were
# taken by hand in the same machine (docs/BENCHMARKS.md, session 22).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t slices - test-cuda_backward slices
t train_slices - test-cuda_train slices
t decode - test-cuda_decode
t cuda_norm - test-cuda rmsnorm
date -u
for bin in s6-prev s6; do echo "== N=64, $bin"; train_bench $bin --batch 16 --config scripts/gpu/configs/mamba-130m-n64.json; done
dec() { timeout 80 dev-out/${BIN:-s6} bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "device, graph\)|rror"; }
for v in prev X=1 S6_DT_FUSED=1; do
  echo "== $v"
  if [ $v = prev ]; then BIN=s6-prev dec --preset mamba-1.4b --batch 128 --tokens 32 --repeats 2
  else (export $v; dec --preset mamba-1.4b --batch 128 --tokens 32 --repeats 2); fi
done
date -u
