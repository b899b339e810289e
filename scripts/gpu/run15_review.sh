#!/bin/bash
# GPU run 15 (session 4, after the review clean-ups): every CUDA test, decode and training once more.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 100 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
for dt in f32 bf16; do timeout 40 $S6 bench decode --device cuda --dtype $dt --preset mamba-130m --batch 1,8,128 --tokens 128 --repeats 3 | grep graph; done
timeout 50 $S6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 | grep train
date -u
