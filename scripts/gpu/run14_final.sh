#!/bin/bash
# GPU run 14 (session 4): the CUDA tests once more, then training with reused logits buffers.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 100 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
{
for dt in tf32 bf16; do timeout 50 $S6 bench train --device cuda --dtype $dt --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
timeout 50 $S6 bench train --device cuda --dtype bf16 --recompute full --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2
for rc in light full; do timeout 80 $S6 bench train --device cuda --dtype bf16 --recompute $rc --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2; done
} > $OUT/bench.log 2>&1
grep "train batch" $OUT/bench.log
date -u
