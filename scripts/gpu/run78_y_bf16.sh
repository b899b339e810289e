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
tr() { local bin=$1; shift; timeout 100 dev-out/$bin bench train --device cuda --dtype bf16 --seqlen 2048 --repeats 2 "$@" 2>&1 | grep -E "^train|rror"; }
for r in 1 2; do
  for bin in s6-prev s6; do echo "$bin 130M"; tr $bin --preset mamba-130m --batch 16; done
done
for bin in s6-prev s6; do echo "$bin 1.4B"; tr $bin --preset mamba-1.4b --batch 8; done
echo "s6 1.4B, recompute full"; tr s6 --preset mamba-1.4b --batch 8 --recompute full
date -u
