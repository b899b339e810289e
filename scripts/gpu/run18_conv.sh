#!/bin/bash
# GPU run 18 (session 5): the tiled conv1d forward and fused conv backward (branch conv) on top of
# run 17. Every CUDA test, then the session's first binary (s6-base, main at c873413) and the new one.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
date -u
for n in test-cuda_backward test-cuda test-cuda_decode test-cuda_train; do
  timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
for b in s6-base s6; do
  echo "== $b"
  timeout 40 dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,128 --tokens 128 --repeats 2 | grep graph
  timeout 60 dev-out/$b bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 | grep train
  timeout 90 dev-out/$b bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2 | grep train
  timeout 90 dev-out/$b bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 | grep prefill
done
timeout 120 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile > $OUT/profile-train-130m.log 2>&1
grep -A30 "^profile" $OUT/profile-train-130m.log
S6_FUSED_STEP=0 timeout 100 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 16 --repeats 1 --profile > $OUT/profile-decode-1.4b-b128-unfused.log 2>&1
grep -A16 "^profile" $OUT/profile-decode-1.4b-b128-unfused.log
date -u
