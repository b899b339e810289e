#!/bin/bash
# GPU run 88 (prepared in session 22, not run yet): what session 22 wrote after its only call.
# 1. Tests: bf16_storage_changes_no_bit_of_training (now also at d_state 64: the first
#    structure's scan kernels writing y in bf16 alone), the fused dt step with its coalesced lanes,
#    then every CUDA test binary.
# 2. Training memory against d_state (130M's shape, batch 16 × 2048, bf16, light): s6-prev (main
#    at e886d58, before the slices and y16) beside s6 at N = 16, 32, 64. Expected by the sizes:
#    ~20 GB at N = 64 against 19.6 at N = 16 (run 87: 26.64 GB on main, 23.92 with the slices
#    at a fixed 2 GiB budget; now y is in bf16 at every N and the budget is what N = 16 needs).
# 3. Decoding at 1.4B batch 16/128: s6-prev, s6, s6 with S6_DT_FUSED=1 (its first version was
#    25,370 against 31,857 tok/s in run 87), two rounds.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t storage - test-cuda_train bf16_storage_changes_no_bit
t dt_fused - test-cuda_decode dt_proj_inside
run_cuda_tests
date -u
for n in 16 32 64; do
  for bin in s6-prev s6; do
    echo "== N=$n, $bin"; train_bench $bin --batch 16 --config scripts/gpu/configs/mamba-130m-n$n.json
  done
done
date -u
dec() { timeout 80 dev-out/${BIN:-s6} bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "device, graph\)|rror"; }
for r in 1 2; do
  echo "== s6-prev"; BIN=s6-prev dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2
  echo "== s6"; dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2
  echo "== S6_DT_FUSED=1"; (export S6_DT_FUSED=1; dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2)
done
date -u
