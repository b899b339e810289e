#!/bin/bash
# GPU run 47 (session 11): the tensor-core kernel with warps per tile chosen by k (wk = 1, 2, 4
# or 8 warps over k per 32 × 32 tile; a block holds 8 / wk tiles): the kernel and decoding tests,
# then decoding side by side with dev-out/s6-prev (main at d7861cd), and by product
# (S6_MMA_SHAPES=n: x_proj only; k: dt_proj only).
# (S6_MMA_SHAPES existed only in the builds of runs 46 and 47.)
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for n in test-cuda test-cuda_decode; do
  timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
date -u
for cfg in prev both k n prev both; do
  bin=s6; [ "$cfg" = prev ] && bin=s6-prev
  echo "== $cfg"
  S6_MMA_SHAPES=$cfg dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
  S6_MMA_SHAPES=$cfg dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 2 2>&1 | grep graph
done
date -u
