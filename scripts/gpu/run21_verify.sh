#!/bin/bash
# GPU run 21 (session 5): every CUDA test on main after the batched-dt threshold, the conv
# kernels' shared parameter load and the batched prefill in generate; decode side by side with
# s6-base (c873413), eager and graph.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
date -u
for n in test-cuda_decode test-cuda test-cuda_backward test-cuda_train; do
  timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
for b in s6-base s6; do
  echo "== $b"
  timeout 50 dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,16,64,128 --tokens 128 --repeats 3 | grep -E "device"
  timeout 60 dev-out/$b bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,16,128 --tokens 64 --repeats 2 | grep graph
done
date -u
