#!/bin/bash
# GPU run 17 (session 5): the fused step's dt_proj as one product from 16 sequences on, uninitialized
# activation buffers, ∂A_log on the device, 128-row head chunks. Tests, then old (s6-base) and new
# binaries side by side.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
date -u
for n in test-cuda_decode test-cuda_train test-cuda; do
  timeout 120 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
for b in s6-base s6; do
  echo "== $b"
  timeout 60 dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,16,128 --tokens 64 --repeats 2 | grep -E "graph|limit"
  timeout 40 dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,128 --tokens 128 --repeats 2 | grep graph
  timeout 60 dev-out/$b bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 | grep train
  timeout 90 dev-out/$b bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2 | grep train
done
timeout 100 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 16 --repeats 1 --profile > $OUT/profile-decode-1.4b-b128.log 2>&1
grep -A12 "^profile" $OUT/profile-decode-1.4b-b128.log
date -u
