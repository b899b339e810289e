#!/bin/bash
# GPU run 87 (session 22; run in its short form, run87_short.sh, for lack of device time): the
# branch's tests (the scan backward in slices: against the CPU, and in training against one
# launch; S6_DT_FUSED against the CPU), every CUDA test binary (the norm kernel serves every path),
# training memory and speed against d_state (main as s6-prev beside the branch at N = 64, where
# the branch splits the scan backward), and decoding at 1.4B batch 16/128 and 130M batch 128:
# main, the branch as it is, and with S6_DT_FUSED=1.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t slices - test-cuda_backward slices
t train_slices - test-cuda_train slices
t dt_fused - test-cuda_decode dt_proj_inside
run_cuda_tests
date -u
for n in 16 64; do
  for bin in s6-prev s6; do
    [ $n = 16 ] && [ $bin = s6-prev ] && continue
    echo "== N=$n, $bin"; train_bench $bin --batch 16 --config scripts/gpu/configs/mamba-130m-n$n.json
  done
  scan_bwd_bench --scan-batch 16 --scan-d-inner 1536 --scan-d-state $n
done
date -u
dec() { timeout 80 dev-out/${BIN:-s6} bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "device, graph\)|rror"; }
for r in 1 2; do
  for v in prev X=1 S6_DT_FUSED=1; do
    echo "== $v"
    if [ $v = prev ]; then BIN=s6-prev dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2
    else (export $v; dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2); fi
  done
done
echo "== 130M batch 128"
BIN=s6-prev dec --preset mamba-130m --batch 128 --tokens 32 --repeats 2
for v in X=1 S6_DT_FUSED=1; do echo "== $v"; (export $v; dec --preset mamba-130m --batch 128 --tokens 32 --repeats 2); done
date -u
