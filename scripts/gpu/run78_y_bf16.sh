#!/bin/bash
# GPU run 78: training's scan output y held in bf16 alone under Recompute::Light too (it was only
# under Full), the kept y's f32 storage released (`Backend::release_f32`): the forward's and the
# backward's casts of y for out_proj's products gone (2 × 157 µs per layer at 130M, run 76), and
# half the memory of the kept y's. Tests, then training side by side with s6-prev (run 77's build).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t train - test-cuda_train
t decode_rel - test-cuda_decode released_f32 bf16_storage
for r in 1 2; do
  for bin in s6-prev s6; do echo "$bin 130M"; train_bench $bin --preset mamba-130m --batch 16; done
done
for bin in s6-prev s6; do echo "$bin 1.4B"; train_bench $bin --preset mamba-1.4b --batch 8; done
echo "s6 1.4B, recompute full"; train_bench s6 --preset mamba-1.4b --batch 8 --recompute full
date -u
