#!/bin/bash
# GPU run 12 (session 4): the reworked conv, column-sum and cross-entropy kernels: every CUDA
# test, then the training profile and throughput again (130M and 1.4B, bf16).
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 100 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
timeout 120 $S6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile > $OUT/profile-130m.log 2>&1
head -22 $OUT/profile-130m.log
{
for dt in tf32 bf16; do timeout 50 $S6 bench train --device cuda --dtype $dt --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
timeout 50 $S6 bench train --device cuda --dtype bf16 --recompute full --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2
for rc in light full; do timeout 80 $S6 bench train --device cuda --dtype bf16 --recompute $rc --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2; done
timeout 40 $S6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,128 --tokens 128 --repeats 3
timeout 40 $S6 bench prefill --device cuda --dtype bf16 --preset mamba-130m --batch 128 --seqlen 2048 --repeats 2
} > $OUT/bench.log 2>&1
grep -v "^$" $OUT/bench.log | grep -v "eager\|limits:"
date -u
